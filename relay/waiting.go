package relay

import (
	"slices"
	"time"

	"tlsrelay/policy"
)

// A message deferred because its destination could not be reached or
// failed verification waits for that destination, not only for its own
// backoff timer: as soon as any transaction with the destination completes
// again (the operator renewed the certificate, the server is back), every
// message waiting for it is retried at once. Without this, mail deferred
// during a long outage would trickle out over up to retry_max (30 minutes
// by default) after the fix.
//
// Only failures of the destination itself count: no connection, a TLS
// verdict, a refused login. An upstream's 4xx may concern one message or
// recipient (greylisting, a full mailbox), so such a message keeps its
// backoff; otherwise every success would retry it at once, over and over.
//
// A destination releases its waiting messages at most once per retry_min:
// an upstream that only now and then completes a transaction (overloaded,
// half up) must not draw the whole backlog onto itself at every success.

// An upstream (one hop of a destination) that fails as a destination's
// upstream — a refused or timed-out connection, a TLS or a login verdict —
// is suspended for retry_min: an attempt skips it at once with the same
// verdict, to the destination's next hop, or, when it was the last,
// deferring the message. A timeout would otherwise tie up a worker for up
// to connect_timeout per message and starve every other destination, and
// with a large backlog even quick refusals would cost a connection, a
// state write and log lines per message per retry. When the time is up,
// one attempt probes it while the others keep skipping it; the probe's
// result ends or renews the suspension. Suspensions are kept per hop, by
// policy.Destination.HopName ("name host:port"): a dead primary costs
// nothing on the next message, which goes to the secondary at once. When
// every hop of a destination is suspended, its mail waits as a cohort
// (cohort.go).

// An upstream that throttles (see throttleOf) is backed off the same way,
// as a whole: for the time its reply names, else for retry_min, doubling
// while it keeps throttling up to retry_max. Attempts meanwhile use the
// destination's next hop; with every hop backing off, the mail waits in
// the queue. Issue 17 is to extend this one mechanism to every failure of
// a destination: suspend, probe, resume are the whole API.

// downDest is a suspended hop.
type downDest struct {
	until   time.Time
	failure *policy.Failure
	probing bool // an attempt past until is under way
	// throttles counts the throttling replies in a row (0: suspended
	// after a timeout).
	throttles int
}

// suspended returns the verdict to skip hop (a HopName) with, without
// trying, or nil when the caller should try: the hop is not suspended, or
// the caller is the one probe once the suspension is up. A caller told to
// try must report its result with tried.
func (q *queue) suspended(hop string) *policy.Failure {
	if q.ndown.Load() == 0 {
		return nil
	}
	now := q.r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	d, ok := q.down[hop]
	if !ok {
		return nil
	}
	if now.Before(d.until) || d.probing {
		f := *d.failure
		why := "upstream suspended after this failure"
		if d.throttles > 0 {
			why = "the upstream throttles; backing off"
		}
		f.Detail += "; not tried again until " + d.until.UTC().Format("15:04:05 UTC") + " (" + why + ")"
		return &f
	}
	d.probing = true
	q.down[hop] = d
	return nil
}

// tried records the result of an attempt through hop: a failure of the
// destination itself (waitsForDestination: no connection, a TLS or a login
// verdict) suspends the hop (again), anything else ends its suspension.
// The destination's cohort is told (cohort.go).
func (q *queue) tried(hop *policy.Destination, f *policy.Failure) {
	key := hop.HopName()
	if f != nil && waitsForDestination(f.Class) {
		until := q.r.now().Add(probeAfter(q.r.Config()))
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.down == nil {
			q.down = map[string]downDest{}
		}
		if _, ok := q.down[key]; !ok {
			q.ndown.Add(1)
		}
		q.down[key] = downDest{until: until, failure: f}
		q.hopDownLocked(hop.Parent(), f)
		return
	}
	if q.ndown.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.down[key]; ok {
		delete(q.down, key)
		q.ndown.Add(-1)
	}
	q.cameBackLocked(hop.Parent().Name())
}

// throttle backs hop off after it throttled (f): until the time named
// (when named > 0), else for retry_min doubled per throttle in a row, at
// most retry_max. It returns until when.
func (q *queue) throttle(hop *policy.Destination, f *policy.Failure, named time.Duration) time.Time {
	key := hop.HopName()
	cfg := q.r.Config().Queue
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.down == nil {
		q.down = map[string]downDest{}
	}
	d, ok := q.down[key]
	if !ok {
		q.ndown.Add(1)
	}
	n := d.throttles + 1
	wait := named
	if wait <= 0 {
		wait = cfg.RetryMin.Duration
		for i := 1; i < n && wait < cfg.RetryMax.Duration; i++ {
			wait *= 2
		}
		wait = min(wait, cfg.RetryMax.Duration)
	}
	until := q.r.now().Add(wait)
	q.down[key] = downDest{until: until, failure: f, throttles: n}
	q.hopDownLocked(hop.Parent(), f)
	return until
}

// resume ends every suspension: an operator asked for a retry, or a reload
// may have changed where and how the destinations are reached.
func (q *queue) resume() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.ndown.Add(-int64(len(q.down)))
	q.down = nil
	q.resumeCohortsLocked()
}

// waitsForDestination reports whether a failure of this class is the
// destination's rather than the message's.
func waitsForDestination(c policy.Class) bool {
	return c == policy.Connect || c == policy.Auth || c.IsTLS()
}

// waitFor records that message id waits for destination dest (by name:
// the name survives a reload, the *Destination does not).
func (q *queue) waitFor(id, dest string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waitForLocked(id, dest)
}

func (q *queue) waitForLocked(id, dest string) {
	it := q.items[id]
	if it == nil || slices.Contains(it.waitsOn, dest) {
		return
	}
	it.waitsOn = append(it.waitsOn, dest)
	if q.waiting == nil {
		q.waiting = map[string]map[string]bool{}
	}
	if q.waiting[dest] == nil {
		q.waiting[dest] = map[string]bool{}
	}
	q.waiting[dest][id] = true
	q.nwaiting.Add(1)
}

// destinationUp makes every message waiting for dest due now, and returns
// how many there were. self is the message whose attempt just succeeded:
// it no longer waits, and is not counted. A message being delivered right
// now goes once more when that attempt ends; a held one stays held (its
// attempt sees so).
func (q *queue) destinationUp(dest, self string) int {
	if q.nwaiting.Load() == 0 {
		return 0 // the usual case, on every delivery: no lock taken
	}
	now := q.r.now()
	every := q.r.Config().Queue.RetryMin.Duration
	q.mu.Lock()
	defer q.mu.Unlock()
	ids := q.waiting[dest]
	if ids[self] {
		q.unwaitLocked(self, dest)
	}
	if len(ids) == 0 {
		return 0
	}
	if last, ok := q.released[dest]; ok && now.Sub(last) < every {
		return 0
	}
	if q.released == nil {
		q.released = map[string]time.Time{}
	}
	q.released[dest] = now
	n := 0
	for id := range ids {
		q.unwaitLocked(id, dest)
		it := q.items[id]
		if it == nil {
			continue
		}
		q.makeReadyLocked(it)
		n++
	}
	return n
}

// unwaitLocked records that id no longer waits for dest.
func (q *queue) unwaitLocked(id, dest string) {
	if it := q.items[id]; it != nil {
		it.waitsOn = slices.DeleteFunc(it.waitsOn, func(d string) bool { return d == dest })
	}
	if q.waiting[dest][id] {
		delete(q.waiting[dest], id)
		q.nwaiting.Add(-1)
	}
	if len(q.waiting[dest]) == 0 {
		delete(q.waiting, dest)
	}
}

// dropLocked forgets id entirely, including what it waits for.
func (q *queue) dropLocked(id string) {
	if it := q.items[id]; it != nil {
		q.unscheduleLocked(it)
		q.unparkLocked(it)
		for _, dest := range slices.Clone(it.waitsOn) {
			q.unwaitLocked(id, dest)
		}
	}
	delete(q.items, id)
}
