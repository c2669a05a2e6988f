// Package limit holds the per-destination limits on what the relay sends
// upstream: how many connections may be open at once (a semaphore) and
// how many transactions may begin per minute (a token bucket holding one
// token, so the rate is smooth, never a burst).
package limit

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Gate limits one destination. The zero limits let everything through.
type Gate struct {
	maxConns int
	interval time.Duration // between transactions; 0: no rate limit

	mu    sync.Mutex
	inUse int
	next  time.Time // when the bucket's one token is there again
	// waiters are woken, one per released connection, when a connection
	// is given back.
	waiters []func()
	freed   chan struct{} // closed and replaced at each release
}

// New returns a gate allowing maxConns connections at once (0: any) and
// perMinute transactions a minute (0: any).
func New(maxConns, perMinute int) *Gate {
	g := &Gate{maxConns: maxConns, freed: make(chan struct{})}
	if perMinute > 0 {
		g.interval = time.Minute / time.Duration(perMinute)
	}
	return g
}

// Limited reports whether the gate limits anything.
func (g *Gate) Limited() bool { return g != nil && (g.maxConns > 0 || g.interval > 0) }

// OverError says which limit a delivery is waiting for.
type OverError struct {
	Limit string        // "max_connections" or "max_messages_per_minute"
	Value int           // the limit's value
	Wait  time.Duration // for the rate: until a transaction may begin
}

func (e *OverError) Error() string {
	if e.Limit == "max_connections" {
		return fmt.Sprintf("%d connections are open (max_connections = %d)", e.Value, e.Value)
	}
	return fmt.Sprintf("the rate limit is reached (max_messages_per_minute = %d); the next transaction may begin in %s", e.Value, e.Wait.Round(time.Millisecond))
}

// TryAcquire takes a connection and a transaction's token at now, or
// says which limit is in the way. A taken connection is given back with
// the returned release.
func (g *Gate) TryAcquire(now time.Time) (release func(), err *OverError) {
	if !g.Limited() {
		return func() {}, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.maxConns > 0 && g.inUse >= g.maxConns {
		return nil, &OverError{Limit: "max_connections", Value: g.maxConns}
	}
	if g.interval > 0 {
		if now.Before(g.next) {
			return nil, &OverError{Limit: "max_messages_per_minute", Value: int(time.Minute / g.interval), Wait: g.next.Sub(now)}
		}
		g.next = now.Add(g.interval)
	}
	g.inUse++
	var once sync.Once
	return func() { once.Do(g.release) }, nil
}

func (g *Gate) release() {
	g.mu.Lock()
	g.inUse--
	close(g.freed)
	g.freed = make(chan struct{})
	var wake func()
	if len(g.waiters) > 0 {
		wake, g.waiters = g.waiters[0], g.waiters[1:]
	}
	g.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// Notify arranges for wake to be called once when a connection is given
// back (a message waiting for max_connections goes then). It reports
// false when a connection is free already: the caller should try now.
func (g *Gate) Notify(wake func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.maxConns == 0 || g.inUse < g.maxConns {
		return false
	}
	g.waiters = append(g.waiters, wake)
	return true
}

// Waiting returns how many messages wait for a connection.
func (g *Gate) Waiting() int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.waiters)
}

// InUse returns how many connections are taken.
func (g *Gate) InUse() int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inUse
}

// Acquire waits until TryAcquire succeeds, for at most bound (or until
// ctx ends), and returns the last limit in the way otherwise.
func (g *Gate) Acquire(ctx context.Context, bound time.Duration, now func() time.Time) (func(), *OverError) {
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		freed := g.freed
		g.mu.Unlock()
		release, over := g.TryAcquire(now())
		if over == nil {
			return release, nil
		}
		var tick <-chan time.Time
		if over.Wait > 0 {
			t := time.NewTimer(over.Wait)
			defer t.Stop()
			tick = t.C
		}
		select {
		case <-freed:
		case <-tick:
		case <-deadline.C:
			return nil, over
		case <-ctx.Done():
			return nil, over
		}
	}
}
