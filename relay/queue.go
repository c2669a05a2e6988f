package relay

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/upstream"
)

// queue schedules the delivery of spooled messages. A new message is
// handed to a worker at once; retries wait in one heap served by one
// timer (schedule.go). The spool is the truth: the queue's memory only
// holds ids and due times, and a message is worked on by one worker at a
// time.
type queue struct {
	r *Relay

	mu    sync.Mutex
	cond  *sync.Cond
	items map[string]*item
	ready []string
	// sched holds the items waiting for a retry time; kick wakes its
	// goroutine when the earliest changes.
	sched schedHeap
	kick  chan struct{}
	// cohorts holds what the queue knows of each suspended destination's
	// waiting mail (cohort.go).
	cohorts map[string]*cohort
	// waiting lists, per destination name, the messages deferred because
	// that destination failed (see waiting.go).
	waiting map[string]map[string]bool
	// nwaiting counts the entries of waiting, read without the lock.
	nwaiting atomic.Int64
	// down holds the suspended hops, by HopName; ndown counts them.
	down  map[string]downDest
	ndown atomic.Int64
	// released is when each destination last released its waiting ones.
	released map[string]time.Time
	closed   bool
	quit     chan struct{} // closed when the queue stops
	// total, loaded and recovered follow the recovery of the spool at
	// start (see load).
	total, loaded atomic.Int64
	recovered     atomic.Bool
	workers       sync.WaitGroup
	ctx           context.Context
	cancel        context.CancelFunc
}

type item struct {
	id       string
	received int64 // unix nanoseconds, for the oldest-message metric
	due      int64 // unix nanoseconds; meaningful while hidx >= 0
	hidx     int32 // index in queue.sched, -1 when not scheduled
	running  bool
	// again is set when the message became due while a worker had it.
	again bool
	// queued is set while it waits in ready for a worker.
	queued bool
	// parked names the suspended destination whose cohort this message
	// waits with, without a retry time of its own (cohort.go); "" if none.
	parked string
	// waitsOn names the destinations this message waits for.
	waitsOn []string
}

func newQueue(r *Relay) *queue {
	q := &queue{r: r, items: map[string]*item{}, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	q.ctx, q.cancel = context.WithCancel(context.Background())
	return q
}

// recover loads the spool: every committed message is scheduled at its
// next attempt time, or now.
func (q *queue) recover() error {
	ids, err := q.recoverSpool()
	if err != nil {
		return err
	}
	return q.load(ids)
}

// recoverSpool makes the spool consistent (see spool.Store.Recover) and
// returns the ids of its messages; the queue learns them with load. Mail
// may be committed from here on.
func (q *queue) recoverSpool() ([]string, error) {
	ids, err := q.r.store.Recover()
	if err != nil {
		return nil, err
	}
	q.reportDamage()
	q.total.Store(int64(len(ids)))
	return ids, nil
}

// load schedules each message of ids: one that was never attempted (it
// has no state) is due now, and costs no read of the spool here — its
// arrival time is in its id; the others at their next attempt, held ones
// never. It may run while the relay accepts and delivers mail: a message
// is worked on by one worker at a time (item.running), and one delivered
// or deleted meanwhile is simply not found.
func (q *queue) load(ids []string) error {
	for _, id := range ids {
		if q.isClosed() {
			return nil
		}
		if loadHook != nil {
			loadHook(id)
		}
		q.loaded.Add(1)
		if !q.r.store.HasState(id) {
			if at, ok := spool.IDTime(id); ok {
				q.note(id, at)
				q.schedule(id, 0)
				continue
			}
		}
		msg, err := q.r.store.Open(id)
		if errors.Is(err, spool.ErrCorrupt) {
			q.quarantine(id, err)
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue // delivered or deleted since the listing
		}
		if err != nil {
			return err // not the file's fault: do not start half-blind
		}
		st, err := q.r.store.LoadState(msg.Envelope)
		msg.Close()
		q.note(id, msg.Received)
		if err != nil {
			q.r.log.Warn("queue state unreadable; retrying all pending recipients", "id", id, "error", err)
		}
		if st.Held {
			q.track(id)
			continue
		}
		q.schedule(id, st.NextAttempt.Sub(q.r.now()))
		for _, rc := range st.Recipients {
			if rc.Status == spool.StatusPending && rc.Destination != "" && waitsForDestination(policy.Class(rc.Class)) {
				q.waitFor(id, rc.Destination)
			}
		}
	}
	return nil
}

// loadHook, if set, is called before load takes each message (tests hold
// the recovery with it).
var loadHook func(id string)

// recovering reports how far load has come while it runs in the
// background: loaded of total; done once every message is known.
func (q *queue) recovering() (loaded, total int64, done bool) {
	return q.loaded.Load(), q.total.Load(), q.recovered.Load()
}

// reportDamage logs each journal segment that Recover found damaged: an
// operator should know that the disk lost or mangled data, and where the
// evidence is.
func (q *queue) reportDamage() {
	for _, d := range q.r.store.Damaged() {
		if d.Err != nil {
			q.r.log.Error("journal segment damaged: it could not be read to its end nor moved aside; it stays in journal/ (never deleted) and its readable messages are delivered from it",
				"segment", d.Segment, "recovered", d.Recovered, "unreadable_bytes", d.Unreadable, "error", d.Err)
			continue
		}
		q.r.log.Error("journal segment damaged: it could not be read to its end; its readable messages were saved and will be delivered, and the segment was moved to corrupt/ for inspection",
			"segment", d.Segment, "moved_to", d.MovedTo, "recovered", d.Recovered, "unreadable_bytes", d.Unreadable)
	}
}

func (q *queue) quarantine(id string, err error) {
	qerr := q.r.store.Quarantine(id)
	q.r.log.Error("spool file cannot be decoded; moved to corrupt/ for inspection, not delivered",
		"id", id, "error", err, "quarantine_error", qerr)
}

// add schedules a message that was just accepted, for now.
func (q *queue) add(env spool.Envelope) {
	q.note(env.ID, env.Received)
	q.schedule(env.ID, 0)
}

// note records when a message was received.
func (q *queue) note(id string, received time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.itemLocked(id).received = received.UnixNano()
}

// stats returns the number of queued messages and the oldest one's time.
func (q *queue) stats() (int, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var oldest int64
	for _, it := range q.items {
		if it.received != 0 && (oldest == 0 || it.received < oldest) {
			oldest = it.received
		}
	}
	if oldest == 0 {
		return len(q.items), time.Time{}
	}
	return len(q.items), time.Unix(0, oldest)
}

// track makes the queue know id without scheduling it (a held message).
func (q *queue) track(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.itemLocked(id)
}

func (q *queue) itemLocked(id string) *item {
	it := q.items[id]
	if it == nil {
		it = &item{id: id, hidx: -1}
		q.items[id] = it
	}
	return it
}

// schedule makes id due after d (at once when d <= 0).
func (q *queue) schedule(id string, d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	it := q.itemLocked(id)
	q.unparkLocked(it)
	if d <= 0 {
		q.makeReadyLocked(it)
		return
	}
	q.setDueLocked(it, time.Now().Add(d).UnixNano())
}

// makeReadyLocked hands it to a worker now: whatever retry time or cohort
// it waited with is over.
func (q *queue) makeReadyLocked(it *item) {
	q.unscheduleLocked(it)
	q.unparkLocked(it)
	if it.running {
		it.again = true
		return
	}
	q.ready = append(q.ready, it.id)
	it.queued = true
	q.cond.Signal()
}

func (q *queue) size() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *queue) start(n int) {
	q.workers.Add(3)
	go q.runScheduler()
	go q.summarize()
	go q.compact()
	for i := 0; i < n; i++ {
		q.workers.Add(1)
		go q.work()
	}
}

// stop lets in-flight deliveries finish until ctx ends, then cancels them.
// Messages stay in the spool either way.
func (q *queue) stop(ctx context.Context) {
	q.mu.Lock()
	if !q.closed {
		close(q.quit)
	}
	q.closed = true
	q.stopCohortsLocked()
	q.cond.Broadcast()
	q.kickScheduler()
	q.mu.Unlock()
	done := make(chan struct{})
	go func() { q.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		q.cancel()
		<-done
	}
	q.cancel()
}

func (q *queue) work() {
	defer q.workers.Done()
	for {
		q.mu.Lock()
		for len(q.ready) == 0 && !q.closed {
			q.cond.Wait()
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		id := q.ready[0]
		q.ready = q.ready[1:]
		it := q.items[id]
		if it != nil {
			it.queued = false
		}
		if it == nil || it.running {
			q.mu.Unlock()
			continue
		}
		it.running = true
		q.mu.Unlock()

		next, keep := q.r.deliverQueued(q.ctx, id)

		q.mu.Lock()
		it.running = false
		q.cond.Broadcast() // a control operation may wait for this item
		if !keep {
			q.dropLocked(id)
		} else if it.again {
			it.again = false
			q.makeReadyLocked(it)
		}
		q.mu.Unlock()
		if keep && !next.IsZero() && !q.isClosed() {
			q.schedule(id, next.Sub(q.r.now()))
		}
	}
}

func (q *queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// lease runs fn with exclusive use of message id: it waits for a delivery
// in flight to finish and keeps workers off the message while fn runs, so
// an operator's change never races a delivery into a double send or a lost
// message. fn's scheduling decisions are its own.
func (q *queue) lease(id string, fn func() error) error {
	q.mu.Lock()
	it := q.itemLocked(id)
	for it.running {
		q.cond.Wait()
	}
	it.running = true
	q.unscheduleLocked(it)
	q.unparkLocked(it)
	q.mu.Unlock()
	err := fn()
	q.mu.Lock()
	it.running = false
	it.again = false
	q.cond.Broadcast()
	q.mu.Unlock()
	return err
}

// forget drops id from the queue's memory (the spool no longer has it).
func (q *queue) forget(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropLocked(id)
}

// deliverQueued makes one delivery attempt for every pending recipient of
// a queued message, grouped by destination. It returns when to try again
// and whether the message stays in the queue; a zero time with keep means
// it stays without a timer (held).
func (r *Relay) deliverQueued(ctx context.Context, id string) (time.Time, bool) {
	msg, err := r.store.Open(id)
	if errors.Is(err, spool.ErrCorrupt) {
		r.queue.quarantine(id, err)
		return time.Time{}, false
	}
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, false // delivered or deleted meanwhile
	}
	if err != nil {
		// Unreadable for now (out of file descriptors, I/O error): the
		// message stays queued and is tried again later.
		r.log.Error("cannot open queued message; will retry", "id", id, "error", err)
		return r.now().Add(r.Config().Queue.RetryMin.Duration), true
	}
	defer msg.Close()
	st, err := r.store.LoadState(msg.Envelope)
	if err != nil {
		r.log.Warn("queue state unreadable; retrying all pending recipients", "id", id, "error", err)
	}
	if st.Held {
		return time.Time{}, true
	}
	if dest, deadline, ok := r.cohortOf(msg.Envelope, &st); ok && r.queue.park(id, dest, deadline) {
		return time.Time{}, true // waits with its destination's cohort: nothing written, nothing logged
	}

	st.Attempts++
	// tried marks the recipients this run has attempted (or found no
	// route for); a group whose destination a reload replaced before it
	// went is not marked, and is routed again under the new policy.
	tried := make([]bool, len(st.Recipients))
	var lw limitWait
	for round := 0; round < maxRoutings && ctx.Err() == nil; round++ {
		if !r.deliverRouted(ctx, msg, &st, tried, &lw) {
			break
		}
	}
	if lw.limited && lw.attempted == 0 {
		// Only a destination's limit stood in the way: nothing was tried,
		// so no attempt is counted and no backoff grows. The message goes
		// when the limit lets it (a connection given back makes it due at
		// once; the timer is the rate's wait, or a safety net).
		return r.now().Add(lw.wait(r.Config().Queue.RetryMin.Duration)), true
	}
	next, keep := r.settle(msg, st)
	if keep && lw.limited && !next.IsZero() {
		if soon := r.now().Add(lw.wait(r.Config().Queue.RetryMin.Duration)); soon.Before(next) {
			next = soon
		}
	}
	return next, keep
}

// limitWait gathers, over one delivery run, whether a destination's limit
// kept recipients from being tried, and for how long at least.
type limitWait struct {
	limited   bool
	rate      time.Duration // the longest wait a rate limit named
	attempted int           // attempts that did go
}

// wait is when to look at the message again: after the rate's wait, or
// (waiting for a connection, which wakes it) at the latest after fallback.
func (lw *limitWait) wait(fallback time.Duration) time.Duration {
	if lw.rate > 0 {
		return lw.rate
	}
	return fallback
}

// maxRoutings bounds how often one delivery run routes a message again
// because reloads keep replacing its destinations; what is left waits for
// the next run.
const maxRoutings = 3

// deliverRouted groups the pending, untried recipients of msg by the
// destination the policy in force gives them (so a reload re-routes mail
// at its next attempt) and makes one attempt per destination. It reports
// whether a reload replaced a destination before its attempt went, so
// that the caller routes those recipients again.
func (r *Relay) deliverRouted(ctx context.Context, msg *spool.Message, st *spool.State, tried []bool, lw *limitWait) (again bool) {
	cfg := r.Config()
	id := msg.ID
	groups := map[*policy.Destination][]int{}
	var order []*policy.Destination
	now := r.now()
	sender := senderOf(msg.From)
	for i, rc := range st.Recipients {
		if rc.Status != spool.StatusPending || tried[i] {
			continue
		}
		dest := cfg.Table.Choose(sender, domainOf(rc.Addr))
		if dest == nil {
			tried[i] = true
			st.Recipients[i].Class = string(policy.NoRoute)
			st.Recipients[i].Reason = "no [[destination]] claims this domain (for this sender) any more"
			st.Recipients[i].Fix = "add a [[destination]] for the domain (and reload), or delete the message"
			st.Recipients[i].When = now
			continue
		}
		if groups[dest] == nil {
			order = append(order, dest)
		}
		groups[dest] = append(groups[dest], i)
	}
	sort.Slice(order, func(a, b int) bool { return order[a].Name() < order[b].Name() })

	// Each destination's recipients go in transactions of at most its
	// max_recipients_per_message, each recipient in exactly one.
	type batch struct {
		dest *policy.Destination
		idx  []int
	}
	var batches []batch
	for _, dest := range order {
		idx := groups[dest]
		per := dest.Limits.MaxRecipientsPerMessage
		if per <= 0 {
			per = len(idx)
		}
		for len(idx) > 0 {
			n := min(per, len(idx))
			batches = append(batches, batch{dest, idx[:n]})
			idx = idx[n:]
		}
	}
	limitedDest := map[*policy.Destination]bool{}
	for n, b := range batches {
		if ctx.Err() != nil {
			break
		}
		dest, idx := b.dest, b.idx
		if limitedDest[dest] {
			continue
		}
		rcpts := make([]string, len(idx))
		for k, i := range idx {
			rcpts[k] = st.Recipients[i].Addr
		}
		dctx, cancel := context.WithTimeout(ctx, cfg.Queue.DeliveryTimeout.Duration)
		o := r.attempt(dctx, msg.Envelope, dest, rcpts, upstream.Body{Size: msg.WireSize(), Open: msg.Body, UTF8: msg.UTF8, RequireTLS: msg.RequireTLS}, false)
		cancel()
		if o.superseded {
			again = true
			continue
		}
		if o.limited != nil {
			// Not tried: these recipients wait, their state untouched.
			limitedDest[dest] = true
			lw.limited = true
			lw.rate = max(lw.rate, o.limited.Wait)
			continue
		}
		lw.attempted++
		for _, i := range idx {
			tried[i] = true
		}
		result := "delivered"
		switch {
		case o.failure != nil:
			result = string(o.failure.Class)
		case !o.delivered:
			result = "refused" // every recipient refused, one by one
		}
		a := spool.Attempt{At: r.now(), Destination: dest.Name(), Upstream: o.via().Upstream, Result: result}
		if o.failure != nil {
			a.Detail = o.failure.Detail
			if waitsForDestination(o.failure.Class) {
				r.queue.waitFor(id, dest.Name())
			}
		}
		if len(o.tries) > 1 {
			// The state names each hop tried and why each one failed.
			for _, t := range o.tries[:len(o.tries)-1] {
				st.AddAttempt(spool.Attempt{At: a.At, Destination: dest.Name(), Upstream: t.hop.Upstream,
					Result: string(t.failure.Class), Detail: t.failure.Detail})
			}
			if o.failure != nil {
				a.Detail = o.tries[len(o.tries)-1].failure.Detail
			}
		}
		st.AddAttempt(a)
		for _, i := range idx {
			rc := &st.Recipients[i]
			rc.Destination, rc.When = dest.Name(), a.At
			f := o.failureFor(rc.Addr)
			switch {
			case f == nil:
				rc.Status, rc.Class, rc.Reason, rc.Fix, rc.Reply = spool.StatusDelivered, "", "", "", o.upReply
			default:
				rc.Class, rc.Reason, rc.Fix = string(f.Class), f.Detail, f.Fix
				if f.Permanent {
					rc.Status = spool.StatusFailed
				}
			}
		}
		if o.delivered && (n < len(batches)-1 || again) {
			// Other destinations are still to be tried: record who has it
			// now, so a crash during those does not send it to them twice.
			// (After the last one, settle records or removes the message.)
			if err := r.store.SaveState(id, *st); err != nil {
				r.log.Error("cannot save queue state", "id", id, "error", err)
			}
		}
	}
	return again
}

// settle decides what happens after an attempt: done, bounced, or retried
// later. It sends the DSNs the attempt calls for.
func (r *Relay) settle(msg *spool.Message, st spool.State) (time.Time, bool) {
	cfg := r.Config()
	now := r.now()
	age := now.Sub(msg.Received)
	pending := 0
	for _, rc := range st.Recipients {
		if rc.Status == spool.StatusPending {
			pending++
		}
	}
	if pending > 0 && age >= cfg.Queue.MaxAge.Duration {
		for i := range st.Recipients {
			rc := &st.Recipients[i]
			if rc.Status == spool.StatusPending {
				rc.Status = spool.StatusFailed
				rc.Reason = "gave up after " + cfg.Queue.MaxAge.String() + " (max_age); last problem: " + rc.Reason
				rc.Class = nonEmpty(rc.Class, string(policy.Connect))
				rc.Expired = true
			}
		}
		pending = 0
	}
	if pending == 0 {
		if err := r.bounce(msg, st); err != nil {
			r.log.Error("cannot queue bounce; keeping the message", "id", msg.ID, "error", err)
			return now.Add(cfg.Queue.RetryMin.Duration), true
		}
		if err := r.store.Remove(msg.ID); err != nil {
			r.log.Error("cannot remove delivered message", "id", msg.ID, "error", err)
		}
		r.log.Info("message done", "id", msg.ID, "delivered", countStatus(st, spool.StatusDelivered), "failed", countStatus(st, spool.StatusFailed))
		return time.Time{}, false
	}
	if d := cfg.Queue.DelayWarning.Duration; d > 0 && age >= d && !st.DelayNotified {
		if err := r.delayNotice(msg, st); err != nil {
			r.log.Error("cannot queue delay notice", "id", msg.ID, "error", err)
		} else {
			st.DelayNotified = true
		}
	}
	st.NextAttempt = now.Add(backoff(st.Attempts, cfg.Queue.RetryMin.Duration, cfg.Queue.RetryMax.Duration))
	// A waiting message in the journal segment still being appended to
	// stays there: most go within minutes (see waiting.go), and moving one
	// out costs a new file and two fsyncs. Once appends have moved on to a
	// new segment, its next deferral moves it out, so a long-waiting
	// message holds old segments on disk for about one retry interval.
	if !r.store.InOpenSegment(msg.ID) {
		if err := r.store.Spill(msg.ID); err != nil {
			// It stays in the journal, which is just as durable; only the
			// segment's disk space is held longer.
			r.log.Warn("cannot move the message out of the journal", "id", msg.ID, "error", err)
		}
	}
	if err := r.store.SaveState(msg.ID, st); err != nil {
		r.log.Error("cannot save queue state", "id", msg.ID, "error", err)
	}
	r.log.Info("message deferred", "id", msg.ID, "pending", pending, "attempts", st.Attempts,
		"next_attempt", st.NextAttempt.UTC().Format(time.RFC3339))
	return st.NextAttempt, true
}

// backoff is the delay before attempt n+1: retry_min doubled per attempt,
// capped at retry_max, with ±25% jitter so that messages queued together
// do not retry in lockstep; never outside [retry_min, retry_max].
func backoff(attempts int, min, max time.Duration) time.Duration {
	d := min
	for i := 1; i < attempts && d < max; i++ {
		d *= 2
	}
	d = time.Duration(float64(d) * (0.75 + 0.5*rand.Float64()))
	return clampDuration(d, min, max)
}

func clampDuration(d, lo, hi time.Duration) time.Duration {
	if d < lo {
		return lo
	}
	if d > hi {
		return hi
	}
	return d
}

func countStatus(st spool.State, s spool.RecipientStatus) int {
	n := 0
	for _, rc := range st.Recipients {
		if rc.Status == s {
			n++
		}
	}
	return n
}

func domainOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == '@' {
			return addr[i+1:]
		}
	}
	return ""
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
