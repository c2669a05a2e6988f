package upstream

import (
	"context"
	"errors"
	"sync"
	"time"

	"tlsrelay/policy"
)

// ErrConnStale marks a failure on a reused connection before anything of
// the message was sent (the upstream had closed it while idle): the
// message can go again on a fresh connection without a duplicate.
var ErrConnStale = errors.New("reused connection no longer usable")

// Pool keeps verified connections open between messages, per destination,
// so that a burst of mail costs one TCP connect, STARTTLS and handshake
// instead of one per message. Connections are keyed by the *Destination
// they were verified under, so a connection is only reused under that very
// policy; after a reload, Prune closes those of destinations no longer in
// force.
//
// A connection is not reused once it is MaxAge old, nor past the earliest
// notAfter of its verified chain: a busy connection would otherwise carry
// mail for hours on a verification made long before, past the expiry of
// the certificate it was made with.
type Pool struct {
	// IdleTimeout closes a connection unused this long; 0 disables reuse.
	IdleTimeout time.Duration
	// MaxMessages caps the messages sent over one connection.
	MaxMessages int
	// MaxAge caps the time since a connection was verified; 0: no cap
	// other than its chain's expiry.
	MaxAge time.Duration
	// Clock is the time ages and expiry are judged at, the one the dialer
	// verifies at; nil means now. Idle times are always real time.
	Clock policy.Clock

	mu     sync.Mutex
	idle   map[*policy.Destination][]*pooled
	closed bool
	reaper *time.Ticker
	done   chan struct{}
}

type pooled struct {
	conn *Conn
	at   time.Time // when it went idle
	// until is when it may no longer be reused: MaxAge after it was
	// verified, or its chain's first expiry, whichever comes first.
	until time.Time
}

// NewPool returns a pool and starts its idle reaper; see Pool for the
// parameters.
func NewPool(idleTimeout time.Duration, maxMessages int, maxAge time.Duration, clock policy.Clock) *Pool {
	p := &Pool{IdleTimeout: idleTimeout, MaxMessages: maxMessages, MaxAge: maxAge, Clock: clock,
		idle: map[*policy.Destination][]*pooled{}, done: make(chan struct{})}
	if idleTimeout > 0 {
		p.reaper = time.NewTicker(max(idleTimeout/4, 50*time.Millisecond))
		go p.reap()
	}
	return p
}

// Get returns an idle connection for dest, if one is fresh enough.
func (p *Pool) Get(dest *policy.Destination) *Conn {
	if p == nil || p.IdleTimeout <= 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for list := p.idle[dest]; len(list) > 0; list = p.idle[dest] {
		pc := list[len(list)-1] // the most recently used: least likely closed by the server
		p.idle[dest] = list[:len(list)-1]
		if time.Since(pc.at) < p.IdleTimeout && p.now().Before(pc.until) {
			return pc.conn
		}
		go pc.conn.Close()
	}
	return nil
}

// Put offers a connection back after a message; it is closed instead when
// the pool is closed, reuse is off, it carried enough messages, it is
// MaxAge old or a certificate of its chain has expired.
func (p *Pool) Put(c *Conn) {
	if p == nil || p.IdleTimeout <= 0 || c.sent >= p.MaxMessages {
		c.Close()
		return
	}
	until := p.reusableUntil(c)
	if !p.now().Before(until) {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.idle[c.Dest] = append(p.idle[c.Dest], &pooled{conn: c, at: time.Now(), until: until})
	p.mu.Unlock()
}

func (p *Pool) now() time.Time {
	if p.Clock != nil {
		return p.Clock()
	}
	return time.Now()
}

// reusableUntil is the time from which c must not carry another message:
// MaxAge after it was verified, or the earliest notAfter of its verified
// chains, whichever comes first. A connection whose chains cannot be
// rebuilt is not reused at all.
func (p *Pool) reusableUntil(c *Conn) time.Time {
	until := chainExpiry(c)
	if p.MaxAge > 0 {
		if end := c.Established.Add(p.MaxAge); end.Before(until) {
			until = end
		}
	}
	return until
}

// chainExpiry returns the earliest notAfter over every certificate of c's
// verified chains (those policy.VerifyState returned), trust anchor
// included.
func chainExpiry(c *Conn) time.Time {
	cs := &c.TLS
	var first time.Time
	for _, chain := range cs.VerifiedChains {
		for _, cert := range chain {
			if first.IsZero() || cert.NotAfter.Before(first) {
				first = cert.NotAfter
			}
		}
	}
	return first // zero (never reusable) without a chain
}

func (p *Pool) reap() {
	for {
		select {
		case <-p.done:
			return
		case <-p.reaper.C:
		}
		var stale []*Conn
		now := p.now()
		p.mu.Lock()
		for d, list := range p.idle {
			keep := list[:0]
			for _, pc := range list {
				if time.Since(pc.at) >= p.IdleTimeout || !now.Before(pc.until) {
					stale = append(stale, pc.conn)
				} else {
					keep = append(keep, pc)
				}
			}
			if len(keep) == 0 {
				delete(p.idle, d)
			} else {
				p.idle[d] = keep
			}
		}
		p.mu.Unlock()
		for _, c := range stale {
			c.Close()
		}
	}
}

// Prune closes and drops the idle connections of every destination for
// which inForce is false, and returns how many it closed. After a reload
// it ends the connections verified under policies no longer in force.
func (p *Pool) Prune(inForce func(*policy.Destination) bool) int {
	var gone []*pooled
	p.mu.Lock()
	for d, list := range p.idle {
		if !inForce(d) {
			gone = append(gone, list...)
			delete(p.idle, d)
		}
	}
	p.mu.Unlock()
	for _, pc := range gone {
		pc.conn.Close()
	}
	return len(gone)
}

// Close closes every idle connection and stops pooling.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	all := p.idle
	p.idle = nil
	p.mu.Unlock()
	if p.reaper != nil {
		p.reaper.Stop()
		close(p.done)
	}
	for _, list := range all {
		for _, pc := range list {
			pc.conn.Close()
		}
	}
}

// Idle returns the number of idle connections (for tests and metrics).
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.idle {
		n += len(l)
	}
	return n
}

// Acquire returns a connection for dest: an idle verified one if the pool
// has it (reused == true), else a new one from d.
func (p *Pool) Acquire(ctx context.Context, d *Dialer, dest *policy.Destination) (c *Conn, reused bool, err error) {
	if c := p.Get(dest); c != nil {
		return c, true, nil
	}
	c, err = d.Dial(ctx, dest)
	return c, false, err
}
