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
	// rated are the queued messages told to wait for the rate, by id,
	// with when they were told to come back; blocked counts the clients
	// waiting in Acquire (reject mode).
	rated   map[string]time.Time
	blocked int
}

// rateGrace is how long after the time it was told to come back a
// message still counts as waiting for the rate: one that never comes
// back (deleted from the queue, routed elsewhere after a reload) leaves
// the count then.
const rateGrace = time.Minute

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

// WaitsForRate records that queued message id was told at now to wait
// for the rate until back, so that Waiting counts it until it comes back
// (Back) or, at the latest, rateGrace after back.
func (g *Gate) WaitsForRate(id string, now, back time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rated == nil {
		g.rated = map[string]time.Time{}
	}
	g.rated[id] = back
	g.prune(now)
}

// Back records that message id is being tried again: it no longer waits
// for the rate.
func (g *Gate) Back(id string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.rated, id)
	g.prune(now)
}

// prune forgets messages that did not come back for the rate in time.
func (g *Gate) prune(now time.Time) {
	for id, back := range g.rated {
		if now.Sub(back) > rateGrace+g.interval {
			delete(g.rated, id)
		}
	}
}

// Waiting returns how many messages wait for a limit: for a connection
// (queued, or a reject-mode client in Acquire), or for the rate.
func (g *Gate) Waiting() int {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.waiters) + len(g.rated) + g.blocked
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
// ctx ends), and returns the last limit in the way otherwise. While it
// waits it counts in Waiting, and calls changed (if not nil) when it
// starts and stops waiting.
func (g *Gate) Acquire(ctx context.Context, bound time.Duration, now func() time.Time, changed func()) (func(), *OverError) {
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for first := true; ; first = false {
		g.mu.Lock()
		freed := g.freed
		g.mu.Unlock()
		release, over := g.TryAcquire(now())
		if over == nil {
			return release, nil
		}
		if first {
			g.mu.Lock()
			g.blocked++
			g.mu.Unlock()
			defer func() {
				g.mu.Lock()
				g.blocked--
				g.mu.Unlock()
				if changed != nil {
					changed()
				}
			}()
			if changed != nil {
				changed()
			}
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
