package relay

import (
	"context"
	"sync"
	"time"

	"tlsrelay/policy"
)

// A reload must not leave mail going out under a policy it replaced: a
// session that passed RCPT before it, or a queued delivery that looked its
// destination up before it, still holds the old *policy.Destination. Every
// delivery therefore runs inside a flight of its destination's gate, and
// Reload retires the gates of the destinations it did not keep:
//
//   - a delivery that has not started yet is not admitted (the queue routes
//     its recipients again under the new policy; a reject-mode session gets
//     a 451 saying the policy changed);
//   - one still connecting is cancelled, and one that has connected does
//     not begin its transaction (the checkpoint in send);
//   - a transaction already under way was verified under the policy in
//     force when it began; it may finish within retireGrace, then it is
//     cancelled too;
//   - Reload returns only once no flight of a retired gate is left, so
//     after it returns no connection is verified and no byte is sent
//     under a policy no longer in force.
//
// An unchanged destination keeps its *Destination, and so its gate, its
// pooled connections and its TLS session cache, across reloads (see
// keepUnchanged).

// retireGrace is how long a reload lets a transaction already under way
// to a replaced destination finish before cancelling it.
const retireGrace = 10 * time.Second

// gates maps each destination in force to its gate. A map is replaced,
// never changed, so it is read without a lock.
type gates map[*policy.Destination]*destGate

// destGate admits the deliveries of one destination while it is in force.
type destGate struct {
	mu      sync.Mutex
	retired bool
	flights map[*flight]struct{}
	drained chan struct{} // closed once retired and without flights
}

// flight is one delivery under a destination's policy.
type flight struct {
	g       *destGate
	ctx     context.Context
	cancel  context.CancelFunc
	sending bool // its transaction has begun (under g.mu)
}

// newGates returns the gates for the destinations of t, carrying over
// the gates of prev for destinations that are kept.
func newGates(t *policy.Table, prev gates) gates {
	gs := gates{}
	for _, d := range t.Destinations() {
		if g := prev[d]; g != nil {
			gs[d] = g
		} else {
			gs[d] = &destGate{flights: map[*flight]struct{}{}}
		}
	}
	return gs
}

// inForce reports whether dest is a destination of the policy in force.
func (r *Relay) inForce(dest *policy.Destination) bool {
	return (*r.gates.Load())[dest] != nil
}

// admit starts a delivery under dest. It returns nil when dest is no
// longer the policy in force; otherwise the flight's context must be used
// for the delivery, and done called at its end.
func (r *Relay) admit(ctx context.Context, dest *policy.Destination) *flight {
	g := (*r.gates.Load())[dest]
	if g == nil {
		return nil
	}
	f := &flight{g: g}
	f.ctx, f.cancel = context.WithCancel(ctx)
	g.mu.Lock()
	if g.retired {
		g.mu.Unlock()
		f.cancel()
		return nil
	}
	g.flights[f] = struct{}{}
	g.mu.Unlock()
	return f
}

// send is the checkpoint between connecting and the transaction: it
// reports whether the transaction may begin, which it may not once the
// destination was retired.
func (f *flight) send() bool {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	if f.g.retired {
		return false
	}
	f.sending = true
	return true
}

// retired reports whether the flight's destination was retired.
func (f *flight) retired() bool {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	return f.g.retired
}

// done ends the flight.
func (f *flight) done() {
	f.cancel()
	g := f.g
	g.mu.Lock()
	delete(g.flights, f)
	if g.retired && len(g.flights) == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
	g.mu.Unlock()
}

// retire stops admitting deliveries to the destinations of old that are
// not in next and waits until none of their flights is left: deliveries
// still connecting are cancelled at once, transactions under way after
// grace. It returns how many flights it waited for.
func retire(old, next gates, grace time.Duration) int {
	var waits []*destGate
	var chans []chan struct{}
	n := 0
	for d, g := range old {
		if next[d] == g {
			continue
		}
		g.mu.Lock()
		g.retired = true
		for f := range g.flights {
			if !f.sending {
				f.cancel()
			}
		}
		if len(g.flights) > 0 {
			n += len(g.flights)
			g.drained = make(chan struct{})
			waits, chans = append(waits, g), append(chans, g.drained)
		}
		g.mu.Unlock()
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	late := false
	for i, g := range waits {
		if !late {
			select {
			case <-chans[i]:
				continue
			case <-timer.C:
				late = true
			}
		}
		g.mu.Lock()
		for f := range g.flights {
			f.cancel()
		}
		g.mu.Unlock()
		<-chans[i]
	}
	return n
}
