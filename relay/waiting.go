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

// A destination that fails as a destination (a refused or timed-out
// connection, a TLS or a login verdict) is also suspended for retry_min:
// its messages are not tried meanwhile — a timeout would tie up a worker
// for up to connect_timeout per message and starve every other
// destination, and with a large backlog even quick refusals would cost a
// connection, a state write and log lines per message per retry. When
// the time is up, one attempt probes it while the others keep waiting;
// the probe's result ends or renews the suspension. How the waiting mail
// is kept meanwhile is cohort.go's.

// downDest is a suspended destination.
type downDest struct {
	until   time.Time
	failure *policy.Failure
	probing bool // an attempt past until is under way
}

// suspended returns the verdict to defer a message to dest with, without
// trying, or nil when the caller should try: the destination is not
// suspended, or the caller is the one probe once the suspension is up. A
// caller told to try must report its result with tried.
func (q *queue) suspended(dest string) *policy.Failure {
	if q.ndown.Load() == 0 {
		return nil
	}
	now := q.r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	d, ok := q.down[dest]
	if !ok {
		return nil
	}
	if now.Before(d.until) || d.probing {
		f := *d.failure
		f.Detail += "; not tried again until " + d.until.UTC().Format("15:04:05 UTC") + " (destination suspended after this failure)"
		return &f
	}
	d.probing = true
	q.down[dest] = d
	return nil
}

// tried records the result of an attempt to dest that took so long: a
// failure of the destination itself (waitsForDestination: no connection,
// a TLS or a login verdict) suspends it (again), anything else ends its
// suspension. The cohort of mail waiting for it is told (cohort.go).
func (q *queue) tried(dest string, f *policy.Failure, took time.Duration) {
	if f != nil && waitsForDestination(f.Class) {
		until := q.r.now().Add(probeAfter(q.r.Config()))
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.down == nil {
			q.down = map[string]downDest{}
		}
		if _, ok := q.down[dest]; !ok {
			q.ndown.Add(1)
		}
		q.down[dest] = downDest{until: until, failure: f}
		q.wentDownLocked(dest, f, until)
		return
	}
	if q.ndown.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.down[dest]; ok {
		delete(q.down, dest)
		q.ndown.Add(-1)
		q.cameBackLocked(dest)
	}
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
