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
// they were verified under: after a reload the new policy's destinations
// are new values, so a connection verified under an old policy is never
// reused; it idles out.
type Pool struct {
	// IdleTimeout closes a connection unused this long; 0 disables reuse.
	IdleTimeout time.Duration
	// MaxMessages caps the messages sent over one connection.
	MaxMessages int

	mu     sync.Mutex
	idle   map[*policy.Destination][]*pooled
	closed bool
	reaper *time.Ticker
	done   chan struct{}
}

type pooled struct {
	conn *Conn
	at   time.Time // when it went idle
}

// NewPool returns a pool and starts its idle reaper.
func NewPool(idleTimeout time.Duration, maxMessages int) *Pool {
	p := &Pool{IdleTimeout: idleTimeout, MaxMessages: maxMessages, idle: map[*policy.Destination][]*pooled{}, done: make(chan struct{})}
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
		if time.Since(pc.at) < p.IdleTimeout {
			return pc.conn
		}
		go pc.conn.Close()
	}
	return nil
}

// Put offers a connection back after a message; it is closed instead when
// the pool is closed, reuse is off, or it carried enough messages.
func (p *Pool) Put(c *Conn) {
	if p == nil || p.IdleTimeout <= 0 || c.sent >= p.MaxMessages {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.idle[c.Dest] = append(p.idle[c.Dest], &pooled{conn: c, at: time.Now()})
	p.mu.Unlock()
}

func (p *Pool) reap() {
	for {
		select {
		case <-p.done:
			return
		case <-p.reaper.C:
		}
		var stale []*Conn
		p.mu.Lock()
		for d, list := range p.idle {
			keep := list[:0]
			for _, pc := range list {
				if time.Since(pc.at) >= p.IdleTimeout {
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
