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

// cohort is what the queue knows of a suspended destination beyond the
// suspension itself.
type cohort struct {
	since   time.Time       // when the suspension began
	failure *policy.Failure // the latest verdict
	until   time.Time       // when the next probe may go
	probe   *time.Timer     // wakes one parked message at until
}

// wentDownLocked is told by tried that dest was suspended (again) until
// until after f. The first time it logs that the destination is down.
func (q *queue) wentDownLocked(dest string, f *policy.Failure, until time.Time) {
	if q.cohorts == nil {
		q.cohorts = map[string]*cohort{}
	}
	c := q.cohorts[dest]
	if c == nil {
		c = &cohort{since: q.r.now()}
		q.cohorts[dest] = c
		q.r.metrics.DownSince.WithLabelValues(dest).Set(float64(c.since.Unix()))
		q.r.log.Warn("destination down: its mail waits without being tried, and one message probes it every retry_min",
			"destination", dest, "class", string(f.Class), "detail", f.Detail, "fix", f.Fix,
			"next_probe", until.UTC().Format(time.RFC3339))
	}
	c.failure, c.until = f, until
	d := until.Sub(q.r.now())
	if c.probe == nil {
		c.probe = time.AfterFunc(d, func() { q.probeCohort(dest) })
	} else {
		c.probe.Reset(d)
	}
}

// cameBackLocked is told by tried that dest's suspension ended with a
// completed transaction: its parked mail goes now.
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
	if d, ok := q.down[dest]; ok && d.probing {
		return // a probe is out; its result renews or ends the suspension
	}
	for id := range q.waiting[dest] {
		if it := q.items[id]; it != nil && it.parked == dest && !it.running {
			q.makeReadyLocked(it)
			return
		}
	}
}

// unparkLocked takes it out of its cohort (it is ready, rescheduled,
// leased or gone).
func (q *queue) unparkLocked(it *item) { it.parked = "" }

// blockedLocked reports whether mail to dest must not be tried now: it is
// suspended and either its time is not up or its probe is out.
func (q *queue) blockedLocked(dest string, now time.Time) bool {
	d, ok := q.down[dest]
	return ok && (now.Before(d.until) || d.probing)
}

// park parks message id with dest's cohort, to be woken at deadline at the
// latest, if dest is still blocked; otherwise it reports false and the
// caller goes on with an attempt.
func (q *queue) park(id, dest string, deadline time.Time) bool {
	now := q.r.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	it := q.items[id]
	if it == nil || !q.blockedLocked(dest, now) {
		return false
	}
	q.waitForLocked(id, dest)
	it.parked = dest
	q.setDueLocked(it, time.Now().Add(deadline.Sub(now)).UnixNano())
	return true
}

// cohortOf returns the suspended destination message id could be parked
// with — when every pending recipient of st routes to a blocked one — and
// when the message must be woken anyway: its delay_warning, or else its
// max_age. ok is false when the message must be attempted now.
func (r *Relay) cohortOf(env spool.Envelope, st *spool.State) (dest string, deadline time.Time, ok bool) {
	q := r.queue
	if q.ndown.Load() == 0 {
		return "", time.Time{}, false
	}
	cfg := r.Config()
	now := r.now()
	deadline = env.Received.Add(cfg.Queue.MaxAge.Duration)
	if d := cfg.Queue.DelayWarning.Duration; d > 0 && !st.DelayNotified && env.Received.Add(d).Before(deadline) {
		deadline = env.Received.Add(d)
	}
	if !now.Before(deadline) {
		return "", time.Time{}, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, rc := range st.Recipients {
		if rc.Status != spool.StatusPending {
			continue
		}
		d := cfg.Table.Lookup(domainOf(rc.Addr))
		if d == nil || !q.blockedLocked(d.Name(), now) {
			return "", time.Time{}, false
		}
		if dest == "" {
			dest = d.Name()
		}
	}
	return dest, deadline, dest != ""
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
