package relay

import (
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/config"
	"tlsrelay/relay/spool"
)

// A suspended destination's mail waits as a cohort. While the destination
// is suspended (waiting.go: a refused or timed-out connection, a TLS or a
// login verdict), a message whose every pending recipient goes to a
// suspended destination is not tried, not rewritten and not logged when it
// comes due or arrives: it is parked with that destination, without a
// retry time of its own. Parking changes nothing on disk, so nothing about
// it needs to survive a crash: after a restart the message is simply due
// again, and the first attempt to the destination suspends it anew.
//
// When the suspension is up, one parked message is made ready: it is the
// probe (waiting.go's suspended lets exactly one attempt through). A
// failed probe renews the suspension; a successful one (or any completed
// transaction with the destination) ends it, and every message that waited
// for the destination goes at once. A parked message still gets its
// "delayed" notice and its bounce: it is woken for a real attempt when its
// delay_warning or max_age comes.
//
// The log says when a destination goes down and when it comes back, one
// line each, and every summaryEvery how many messages wait for each
// suspended destination, since when and why.

// summaryEvery is how often the queue logs its summary of suspended
// destinations (a variable for tests).
var summaryEvery = time.Minute

// probeAfter is how long a failure suspends a destination: retry_min. (A
// variable for tests, which want probes sooner than retries.)
var probeAfter = func(cfg *config.Config) time.Duration { return cfg.Queue.RetryMin.Duration }

// cohort is what the queue knows of a destination whose every hop is
// suspended, beyond the suspensions themselves.
type cohort struct {
	dest    *policy.Destination
	since   time.Time       // when the suspension began
	failure *policy.Failure // the latest verdict
	until   time.Time       // when the next probe may go
	probe   *time.Timer     // wakes one parked message at until
}

// hopDownLocked is told by tried and throttle that a hop of dest was
// suspended (again) after f. When that leaves every hop of dest blocked,
// its cohort goes down (again) until the earliest hop may be probed; the
// first time, the log says the destination is down. Mail to a destination
// delivered straight to mail exchangers has no fixed hops and no cohort.
func (q *queue) hopDownLocked(dest *policy.Destination, f *policy.Failure) {
	now := q.r.now()
	if dest.IsMX() || !q.blockedLocked(dest, now) {
		return
	}
	var until time.Time
	for _, h := range dest.Hops() {
		if d := q.down[h.HopName()]; until.IsZero() || d.until.Before(until) {
			until = d.until
		}
	}
	name := dest.Name()
	if q.cohorts == nil {
		q.cohorts = map[string]*cohort{}
	}
	c := q.cohorts[name]
	if c == nil {
		c = &cohort{dest: dest, since: now}
		q.cohorts[name] = c
		q.r.metrics.DownSince.WithLabelValues(name).Set(float64(c.since.Unix()))
		q.r.log.Warn("destination down: its mail waits without being tried, and one message probes it every retry_min",
			"destination", name, "upstreams", len(dest.Hops()), "class", string(f.Class), "detail", f.Detail, "fix", f.Fix,
			"next_probe", until.UTC().Format(time.RFC3339))
	}
	c.dest, c.failure, c.until = dest, f, until
	d := until.Sub(now)
	if c.probe == nil {
		c.probe = time.AfterFunc(d, func() { q.probeCohort(name) })
	} else {
		c.probe.Reset(d)
	}
}

// cameBackLocked is told by tried that a hop of dest completed a
// transaction: dest works again, and its parked mail goes now.
func (q *queue) cameBackLocked(dest string) {
	c := q.cohorts[dest]
	if c == nil {
		return
	}
	c.probe.Stop()
	delete(q.cohorts, dest)
	q.r.metrics.DownSince.DeleteLabelValues(dest)
	n := q.releaseParkedLocked(dest)
	q.r.log.Info("destination back: it works again; the mail that waited for it goes now",
		"destination", dest, "down_since", c.since.UTC().Format(time.RFC3339),
		"down_for", q.r.now().Sub(c.since).Round(time.Second).String(), "waiting", len(q.waiting[dest]), "released", n)
}

// resumeCohortsLocked ends every cohort (resume lifted the suspensions):
// parked mail is tried again, and suspends its destination anew if it is
// still down.
func (q *queue) resumeCohortsLocked() {
	for dest, c := range q.cohorts {
		c.probe.Stop()
		q.r.metrics.DownSince.DeleteLabelValues(dest)
		q.releaseParkedLocked(dest)
	}
	q.cohorts = nil
}

// stopCohortsLocked stops the probe timers (the queue is stopping).
func (q *queue) stopCohortsLocked() {
	for _, c := range q.cohorts {
		c.probe.Stop()
	}
}

// releaseParkedLocked makes every message parked with dest ready.
func (q *queue) releaseParkedLocked(dest string) int {
	n := 0
	for id := range q.waiting[dest] {
		if it := q.items[id]; it != nil && it.parked == dest {
			q.makeReadyLocked(it)
			n++
		}
	}
	return n
}

// probeCohort makes one message parked with dest ready once its
// suspension is up: that message's attempt is the probe.
func (q *queue) probeCohort(dest string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	c := q.cohorts[dest]
	if c == nil || q.closed {
		return
	}
	if d := c.until.Sub(q.r.now()); d > 0 {
		c.probe.Reset(d)
		return
	}
	for _, h := range c.dest.Hops() {
		if d, ok := q.down[h.HopName()]; ok && d.probing {
			return // a probe is out; its result renews or ends the suspension
		}
	}
	var busy *item
	for id := range q.waiting[dest] {
		if it := q.items[id]; it != nil && it.parked == dest {
			if !it.running {
				q.makeReadyLocked(it)
				return
			}
			busy = it
		}
	}
	if busy != nil {
		// Every parked one is busy this instant (just parked by its
		// worker, or being moved out of the journal): this one goes as
		// the probe as soon as it is free.
		q.makeReadyLocked(busy)
	}
}

// unparkLocked takes it out of its cohort (it is ready, rescheduled,
// leased or gone).
func (q *queue) unparkLocked(it *item) { it.parked = "" }

// blockedLocked reports whether mail to dest must not be tried now: each
// of its hops is suspended, and for each either its time is not up or its
// probe is out. A destination of mail exchangers is never blocked as a
// whole (its hops are found per recipient domain).
func (q *queue) blockedLocked(dest *policy.Destination, now time.Time) bool {
	if dest.IsMX() {
		return false
	}
	for _, h := range dest.Hops() {
		d, ok := q.down[h.HopName()]
		if !ok || !(now.Before(d.until) || d.probing) {
			return false
		}
	}
	return true
}

// park parks message id with dest's cohort, to be woken at deadline at the
// latest, if dest is still blocked; otherwise it reports false and the
// caller goes on with an attempt.
func (q *queue) park(id string, dest *policy.Destination, deadline time.Time) bool {
	now := q.r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	it := q.items[id]
	if it == nil || !q.blockedLocked(dest, now) {
		return false
	}
	q.waitForLocked(id, dest.Name())
	it.parked = dest.Name()
	q.setDueLocked(it, time.Now().Add(deadline.Sub(now)).UnixNano())
	return true
}

// cohortOf returns the suspended destination message id could be parked
// with — when every pending recipient of st routes to a blocked one — and
// when the message must be woken anyway: its delay_warning, or else its
// max_age. ok is false when the message must be attempted now.
func (r *Relay) cohortOf(env spool.Envelope, st *spool.State) (dest *policy.Destination, deadline time.Time, ok bool) {
	q := r.queue
	if q.ndown.Load() == 0 {
		return nil, time.Time{}, false
	}
	cfg := r.Config()
	now := r.now()
	deadline = env.Received.Add(cfg.Queue.MaxAge.Duration)
	if d := cfg.Queue.DelayWarning.Duration; d > 0 && !st.DelayNotified && env.Received.Add(d).Before(deadline) {
		deadline = env.Received.Add(d)
	}
	if !now.Before(deadline) {
		return nil, time.Time{}, false
	}
	sender := senderOf(env.From)
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, rc := range st.Recipients {
		if rc.Status != spool.StatusPending {
			continue
		}
		d := cfg.Table.Choose(sender, domainOf(rc.Addr))
		if d == nil || !q.blockedLocked(d, now) {
			return nil, time.Time{}, false
		}
		if dest == nil {
			dest = d
		}
	}
	return dest, deadline, dest != nil
}

// summarize logs, every summaryEvery, each suspended destination: how
// many messages wait for it, since when, and why.
func (q *queue) summarize() {
	defer q.workers.Done()
	t := time.NewTicker(summaryEvery)
	defer t.Stop()
	for {
		select {
		case <-q.quit:
			return
		case <-t.C:
		}
		type line struct {
			dest  string
			c     cohort
			count int
		}
		var lines []line
		q.mu.Lock()
		for dest, c := range q.cohorts {
			lines = append(lines, line{dest, *c, len(q.waiting[dest])})
		}
		q.mu.Unlock()
		now := q.r.now()
		for _, l := range lines {
			q.r.log.Warn("destination still down: mail waits for it",
				"destination", l.dest, "waiting", l.count, "down_since", l.c.since.UTC().Format(time.RFC3339),
				"down_for", now.Sub(l.c.since).Round(time.Second).String(), "class", string(l.c.failure.Class),
				"detail", l.c.failure.Detail, "next_probe", l.c.until.UTC().Format(time.RFC3339))
		}
	}
}
