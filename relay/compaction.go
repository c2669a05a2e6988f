package relay

import "time"

// The queue drives the compaction of the spool's journal (see
// spool.Store.Compact): every compactEvery, the oldest segments that hold
// back the journal's collection and are sparse — a few messages of a down
// destination's cohort, or others waiting for a retry, among many gone —
// have their waiting messages moved to files of their own, and are
// deleted. A pass costs a look at the oldest segments, and one pass over
// the journal's index only when one of them is to be compacted; nothing
// per delivered message.

// compactEvery is how often the queue compacts the journal (a variable
// for tests).
var compactEvery = 30 * time.Second

// compact runs compactJournal every compactEvery until the queue stops.
func (q *queue) compact() {
	defer q.workers.Done()
	t := time.NewTicker(compactEvery)
	defer t.Stop()
	for {
		select {
		case <-q.quit:
			return
		case <-t.C:
		}
		q.compactJournal()
	}
}

// compactJournal makes one compaction pass and logs one line for each
// segment it moved messages out of.
func (q *queue) compactJournal() {
	done, err := q.r.store.Compact(q.claimIdle)
	for _, c := range done {
		if c.Moved == 0 && c.Freed == 0 {
			continue
		}
		q.r.metrics.JournalCompactedMessages.Add(float64(c.Moved))
		args := []any{"segment", c.Segment, "moved", c.Moved, "freed_bytes", c.Freed}
		if c.Busy > 0 {
			args = append(args, "busy", c.Busy) // being delivered: the segment goes at a later pass
		}
		q.r.log.Info("journal segment compacted: its waiting messages moved to files of their own in msg/", args...)
	}
	if err != nil {
		q.r.log.Warn("journal compaction stopped; the segment stays on disk and is tried again at the next pass", "error", err)
	}
}

// claimIdle gives compaction exclusive use of message id while it is
// idle: known to the queue, not being delivered, not waiting for a worker
// (it goes within moments, and moving it out would be wasted work) and
// not being changed by an operator. Workers and leases keep off it until
// release. Unlike lease, it leaves the message's retry time and cohort as
// they are: one that comes due meanwhile is made ready at release.
func (q *queue) claimIdle(id string) (release func(), ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	it := q.items[id]
	if q.closed || it == nil || it.running || it.queued {
		return nil, false
	}
	it.running = true
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		it.running = false
		q.cond.Broadcast() // a lease may wait for it
		if it.again {
			it.again = false
			if q.items[id] == it {
				q.makeReadyLocked(it)
			}
		}
	}, true
}
