package relay

import (
	"context"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/limit"
)

// rejectLimitWait bounds how long a reject-mode client waits for a
// destination's limit before it gets a 451 naming the limit.
const rejectLimitWait = 30 * time.Second

// limitGate returns dest's limit gate, nil when dest has no limit. A
// destination a reload keeps keeps its gate; a changed one starts afresh.
func (r *Relay) limitGate(dest *policy.Destination) *limit.Gate {
	l := dest.Limits
	if l.MaxConnections == 0 && l.MaxMessagesPerMinute == 0 {
		return nil
	}
	if g, ok := r.limits.Load(dest); ok {
		return g.(*limit.Gate)
	}
	g, _ := r.limits.LoadOrStore(dest, limit.New(l.MaxConnections, l.MaxMessagesPerMinute))
	return g.(*limit.Gate)
}

// takeLimit takes one of dest's connections and a transaction's token for
// the attempt of message id. A reject-mode client (wait) waits for them up
// to rejectLimitWait. A queued message does not wait here, holding a
// worker: it is told which limit is in the way, and one waiting for a
// connection is made due again when one is given back.
func (r *Relay) takeLimit(ctx context.Context, id string, dest *policy.Destination, wait bool) (func(), *limit.OverError) {
	g := r.limitGate(dest)
	if g == nil {
		return func() {}, nil
	}
	name := dest.Name()
	gauges := func() {
		r.metrics.ConnectionsInUse.WithLabelValues(name).Set(float64(g.InUse()))
		r.metrics.LimitWaiting.WithLabelValues(name).Set(float64(g.Waiting()))
	}
	counted := func(release func(), over *limit.OverError) (func(), *limit.OverError) {
		gauges()
		if over != nil {
			return nil, over
		}
		return func() { release(); gauges() }, nil
	}
	if wait {
		return counted(g.Acquire(ctx, rejectLimitWait, time.Now, gauges))
	}
	g.Back(id, time.Now())
	for {
		now := time.Now()
		release, over := g.TryAcquire(now)
		if over != nil && over.Limit == "max_messages_per_minute" {
			// The queue looks at the message again after the rate's wait.
			g.WaitsForRate(id, now, now.Add(over.Wait))
		}
		if over == nil || over.Limit != "max_connections" {
			return counted(release, over)
		}
		if g.Notify(func() { r.queue.schedule(id, 0) }) {
			return counted(nil, over)
		}
		// A connection was given back meanwhile: try again.
	}
}

// forgetLimits drops the gates of destinations no longer in force.
func (r *Relay) forgetLimits(inForce func(*policy.Destination) bool) {
	r.limits.Range(func(k, _ any) bool {
		if !inForce(k.(*policy.Destination)) {
			r.limits.Delete(k)
		}
		return true
	})
}
