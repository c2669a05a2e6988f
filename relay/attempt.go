package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/limit"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/upstream"
)

// outcome is the result of one delivery attempt of one message to one
// destination, for some of its recipients.
type outcome struct {
	dest *policy.Destination
	// hop is the hop that gave this outcome (the last one tried); tries
	// lists every hop tried, in order, with its failure.
	hop       *policy.Destination
	tries     []hopTry
	rcpts     []string
	failure   *policy.Failure            // the attempt as a whole failed
	refused   map[string]*policy.Failure // recipients the upstream refused
	tls       tls.ConnectionState
	upReply   string // the upstream's reply to DATA
	delivered bool
	// limited: a limit of dest (max_connections, max_messages_per_minute)
	// kept the attempt from starting; nothing else here is set. The queue
	// keeps the message waiting, without counting an attempt.
	limited *limit.OverError
	// superseded: dest was replaced by a reload before the message went
	// (or while it went, see policygate.go); nothing else here is set.
	// The queue routes the recipients again; a reject-mode client is asked
	// to send it again.
	superseded bool
}

// via is the hop the outcome came from (the destination's first when
// none was tried).
func (o *outcome) via() *policy.Destination {
	if o.hop != nil {
		return o.hop
	}
	return o.dest
}

// failureFor returns why rcpt was not delivered, or nil if it was.
func (o *outcome) failureFor(rcpt string) *policy.Failure {
	if o.failure != nil {
		return o.failure
	}
	if f := o.refused[rcpt]; f != nil {
		return f
	}
	if !o.delivered {
		return &policy.Failure{Class: policy.Protocol, Host: o.via().Upstream, Detail: "not delivered"}
	}
	return nil
}

// hopTry is one hop an attempt tried, and why it failed (nil: it took
// the transaction, whatever it said of single recipients).
type hopTry struct {
	hop     *policy.Destination
	failure *policy.Failure
}

// attempt delivers the message to rcpts through dest's hops, in order: it
// moves to the next hop when one fails as a whole — no connection, a TLS
// verdict, a refused login, a 4xx or a broken dialogue for the whole
// transaction, or the hop is suspended — and never on an answer about a
// recipient or a 5xx for the message (the upstream's verdict). Only when
// every hop failed is the attempt a failure. With allOrNothing (reject
// mode) a recipient refused by the upstream stops the whole transaction
// before DATA, so the client's single reply is true for every recipient.
// The attempt runs as a flight of dest's gate: when a reload replaces
// dest before the transaction begins (or cancels it), the outcome is
// superseded and nothing else.
func (r *Relay) attempt(ctx context.Context, env spool.Envelope, dest *policy.Destination, rcpts []string, body upstream.Body, allOrNothing bool) *outcome {
	o := r.attemptDest(ctx, env, dest, rcpts, body, allOrNothing)
	r.drops.note(env, rcpts, o, allOrNothing)
	return o
}

// attemptDest is attempt, without noting what the relay took from the
// drop directory.
func (r *Relay) attemptDest(ctx context.Context, env spool.Envelope, dest *policy.Destination, rcpts []string, body upstream.Body, allOrNothing bool) *outcome {
	o := &outcome{dest: dest, rcpts: rcpts}
	fl := r.admit(ctx, dest)
	if fl == nil {
		o.superseded = true
		r.log.Info("not tried: the destination's policy was replaced by a reload", "id", env.ID, "destination", dest.Name())
		return o
	}
	defer fl.done()
	release, over := r.takeLimit(fl.ctx, env.ID, dest, allOrNothing)
	if over != nil {
		o.limited = over
		r.log.Debug("not tried now: the destination's limit is reached", "id", env.ID, "destination", dest.Name(), "limit", over.Error())
		return o
	}
	defer release()
	if dest.IsMX() {
		return r.attemptMX(fl, env, dest, rcpts, body, allOrNothing)
	}
	hops := dest.Hops()
	var tries []hopTry
	for i, hop := range hops {
		o = r.attemptHop(fl, env, hop, rcpts, body, allOrNothing)
		if o.superseded {
			return o
		}
		tries = append(tries, hopTry{hop, o.failure})
		if o.failure == nil || !failsOver(o.failure.Class) || fl.ctx.Err() != nil {
			break
		}
		if i < len(hops)-1 {
			r.log.Info("upstream failed; trying the next one", "id", env.ID, "destination", dest.Name(),
				"failed_upstream", hop.Upstream, "failure", string(o.failure.Class), "next_upstream", hops[i+1].Upstream)
		}
	}
	o.tries = tries
	if o.failure != nil && len(tries) > 1 {
		o.failure = everyHopFailed(tries)
	}
	return o
}

// failsOver reports whether a failure of this class moves an attempt on
// to the destination's next hop: it is the hop's, not the message's.
func failsOver(c policy.Class) bool {
	return c != policy.UpstreamPermanent && c != policy.NoRoute
}

// everyHopFailed is the verdict of an attempt whose hops all failed: the
// last one's class, and each hop's failure in the detail.
func everyHopFailed(tries []hopTry) *policy.Failure {
	last := tries[len(tries)-1].failure
	f := *last
	var each, fixes []string
	for _, t := range tries {
		each = append(each, fmt.Sprintf("%s: %s: %s", t.hop.Upstream, t.failure.Class, t.failure.Detail))
		if t.failure.Fix != "" && !slices.Contains(fixes, t.failure.Fix) {
			fixes = append(fixes, t.failure.Fix)
		}
	}
	f.Detail = fmt.Sprintf("all %d upstreams failed: %s", len(tries), strings.Join(each, "; "))
	f.Fix = strings.Join(fixes, "; ")
	return &f
}

// attemptHop delivers through one hop of the flight's destination.
func (r *Relay) attemptHop(fl *flight, env spool.Envelope, hop *policy.Destination, rcpts []string, body upstream.Body, allOrNothing bool) *outcome {
	ctx := fl.ctx
	dest := hop.Parent()
	o := &outcome{dest: dest, hop: hop, rcpts: rcpts}
	log := r.log.With("id", env.ID, "destination", dest.Name(), "upstream", hop.Upstream, "rcpts", len(rcpts))
	if f := r.queue.suspended(hop.HopName()); f != nil {
		o.failure = f
		log.Debug("not tried: the upstream is suspended", "detail", f.Detail)
		return o
	}
	defer func() {
		if o.superseded {
			return
		}
		if named, ok := throttleOf(o.failure); ok {
			until := r.queue.throttle(hop, o.failure, named)
			r.metrics.Throttles.WithLabelValues(dest.Name(), hop.Upstream).Inc()
			log.Warn("upstream throttles; backing off", "until", until.UTC().Format(time.RFC3339), "detail", o.failure.Detail)
		} else {
			r.queue.tried(hop, o.failure)
		}
		r.countAttempt(env, o)
	}()
	// superseded turns a failure that a reload caused (it cancelled the
	// attempt, or retired dest before the transaction began) into a
	// superseded outcome.
	superseded := func(err error) bool {
		if err != nil && ctx.Err() == nil || !fl.retired() {
			return false
		}
		*o = outcome{dest: dest, hop: hop, rcpts: rcpts, superseded: true}
		log.Info("stopped: the destination's policy was replaced by a reload", "error", err)
		return true
	}
	if dest.Limits.MaxConnections > 0 && len(dest.Hops()) > 1 {
		// Idle connections to the destination's other hops count
		// against max_connections too: close them before opening one here.
		r.pool.Prune(func(h *policy.Destination) bool { return h.Parent() != dest || h == hop })
	}
	conn, reused, err := r.pool.Acquire(ctx, r.dialer(), hop)
	if err != nil {
		if superseded(err) {
			return o
		}
		o.failure = policy.FailureOf(hop.Upstream, err)
		logFailure(log, "delivery attempt failed", o.failure)
		return o
	}
	if !fl.send() {
		conn.Close()
		superseded(nil)
		return o
	}
	// envelope_from replaces MAIL FROM on the wire only: the spool keeps
	// the original sender, so the relay's DSNs still go to it. A message
	// from the null sender (a DSN) keeps <>: a bounce must never be
	// bounced (RFC 5321 4.5.5), whatever the upstream demands.
	from := env.From
	if dest.Rewrite.EnvelopeFrom != "" && env.From != "" {
		from = dest.Rewrite.EnvelopeFrom
	}
	res, err := conn.Send(ctx, from, rcpts, body, allOrNothing)
	if reused && errors.Is(err, upstream.ErrConnStale) {
		// The upstream closed the idle connection; nothing of this message
		// was sent, so it goes once more over a freshly verified one.
		conn.Close()
		log.Debug("reused connection was stale; reconnecting")
		if conn, err = r.dialer().Dial(ctx, hop); err != nil {
			if superseded(err) {
				return o
			}
			o.failure = policy.FailureOf(hop.Upstream, err)
			logFailure(log, "delivery attempt failed", o.failure)
			return o
		}
		if fl.retired() {
			conn.Close()
			superseded(nil)
			return o
		}
		reused = false
		res, err = conn.Send(ctx, from, rcpts, body, allOrNothing)
	}
	o.tls = conn.TLS
	o.refused = res.Refused
	if err != nil {
		conn.Close()
		if superseded(err) {
			return o
		}
		o.failure = policy.FailureOf(hop.Upstream, err)
		logFailure(log, "delivery attempt failed", o.failure)
		return o
	}
	o.upReply = res.Reply
	o.delivered = len(res.Refused) < len(rcpts) && !(allOrNothing && len(res.Refused) > 0)
	for rc, f := range res.Refused {
		logFailure(log.With("rcpt", rc), "recipient refused by upstream", f)
	}
	if o.delivered {
		log.Info("delivered", "tls_version", tls.VersionName(conn.TLS.Version),
			"cipher", tls.CipherSuiteName(conn.TLS.CipherSuite), "reused_connection", reused, "refused", len(res.Refused), "reply", res.Reply)
	}
	if !reused && hop.MXHost() == nil {
		// Not for mail exchangers: their certificates are the recipients'
		// to renew, and one series per host would grow without bound.
		r.warnExpiry(conn)
		r.recordExpiry(conn)
	}
	if fl.retired() {
		conn.Close() // verified under a policy a reload replaced
	} else {
		r.pool.Put(conn)
	}
	if n := r.queue.destinationUp(dest.Name(), env.ID); n > 0 {
		r.log.Info("destination works again; retrying the messages that waited for it now",
			"destination", dest.Name(), "upstream", hop.Upstream, "messages", n)
	}
	return o
}

// logFailure writes one line for a failed attempt. TLS failures carry
// tls_failure=<class> so they can be grepped and alerted on.
func logFailure(log *slog.Logger, msg string, f *policy.Failure) {
	attrs := []any{"detail", f.Detail, "fix", f.Fix}
	if f.Result != "" {
		attrs = append([]any{"tlsrpt_result", string(f.Result)}, attrs...)
	}
	if f.Class.IsTLS() {
		attrs = append([]any{"tls_failure", string(f.Class)}, attrs...)
	} else {
		attrs = append([]any{"failure", string(f.Class)}, attrs...)
	}
	log.Warn(msg, attrs...)
}

// reply is the answer to DATA for a reject-mode transaction.
func (o *outcome) reply() error {
	if o.superseded {
		return policyChanged(o.dest)
	}
	if o.limited != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
			Message: clip(fmt.Sprintf("%s: the relay's limit towards this destination is reached: %s; nothing was sent, try again later", o.dest.Name(), o.limited), 490)}
	}
	if o.failure == nil && len(o.refused) == 0 && o.delivered {
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
			Message: fmt.Sprintf("OK delivered to %s via %s over %s; upstream said: %s",
				o.dest.Name(), o.via().Upstream, tls.VersionName(o.tls.Version), clip(o.upReply, 200))}
	}
	f := o.failure
	if f == nil {
		for _, rc := range o.rcpts {
			if o.refused[rc] != nil {
				f = o.refused[rc]
				f = &policy.Failure{Class: f.Class, Host: f.Host, Detail: rc + ": " + f.Detail, Fix: f.Fix, Permanent: f.Permanent, Err: f.Err}
				break
			}
		}
	}
	return failureReply(o.dest, f)
}

// policyChanged is the reply in a reject-mode transaction whose
// destination was replaced by a reload after the transaction chose it.
func policyChanged(dest *policy.Destination) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: clip("The relay's policy for "+dest.Name()+" changed during this transaction (configuration reloaded); send the message again to have it relayed under the policy now in force", 490)}
}

// failureReply maps a failure to the SMTP reply a client gets in reject
// mode: TLS failures and upstream refusals are permanent (5xx, the message
// must not be sent another way), connection trouble is temporary (4xx).
// The text names the destination, the class and the fix.
func failureReply(dest *policy.Destination, f *policy.Failure) *smtp.SMTPError {
	var code int
	var enh smtp.EnhancedCode
	label := "failure"
	switch {
	case f.Class == policy.StartTLSMissing:
		code, enh, label = 554, smtp.EnhancedCode{5, 7, 10}, "tls_failure"
	case f.Class == policy.RequireTLS:
		code, enh = 554, smtp.EnhancedCode{5, 7, 30}
	case f.Class == policy.NullMX:
		code, enh = 556, smtp.EnhancedCode{5, 1, 10}
	case f.Class == policy.NoSuchDomain:
		code, enh = 550, smtp.EnhancedCode{5, 1, 2}
	case f.Class == policy.MXSecurityFailure:
		code, enh = 554, smtp.EnhancedCode{5, 7, 5}
	case f.Class == policy.DNS:
		code, enh = 451, smtp.EnhancedCode{4, 4, 3}
	case f.Class.IsTLS():
		code, enh, label = 554, smtp.EnhancedCode{5, 7, 5}, "tls_failure"
	case f.Class == policy.Auth:
		code, enh = 554, smtp.EnhancedCode{5, 7, 0}
	case f.Class == policy.UpstreamPermanent, f.Class == policy.UpstreamTemporary:
		code, enh = upstreamCode(f)
	case f.Class == policy.Connect:
		code, enh = 451, smtp.EnhancedCode{4, 4, 1}
	default:
		code, enh = 451, smtp.EnhancedCode{4, 4, 0}
	}
	// One line: clients show the last line (or only the first) of a
	// multi-line reply, and go-smtp puts the enhanced code on the last only.
	via := f.Host
	if via == "" {
		via = dest.Upstream
	}
	text := fmt.Sprintf("%s via %s: %s=%s: %s; fix: %s", dest.Name(), via, label, f.Class, f.Detail, f.Fix)
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: clip(text, 490)}
}

// upstreamCode passes on the upstream's own code where it is sensible.
func upstreamCode(f *policy.Failure) (int, smtp.EnhancedCode) {
	var se *smtp.SMTPError
	if errors.As(f.Err, &se) && se.Code >= 400 && se.Code < 600 {
		enh := se.EnhancedCode
		if enh == smtp.NoEnhancedCode || enh == smtp.EnhancedCodeNotSet {
			enh = smtp.EnhancedCode{se.Code / 100, 0, 0}
		}
		return se.Code, enh
	}
	if f.Permanent {
		return 554, smtp.EnhancedCode{5, 0, 0}
	}
	return 451, smtp.EnhancedCode{4, 0, 0}
}

// clip shortens s for one reply line (RFC 5321 allows 512 octets) and
// removes line breaks that would end the reply early.
func clip(s string, n int) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

func (r *Relay) countReject(reason string) {
	r.metrics.Rejected.WithLabelValues(reason).Inc()
}

// countAttempt records an attempt in the metrics: its result, a TLS
// failure's class, and for a delivery the time since acceptance.
func (r *Relay) countAttempt(env spool.Envelope, o *outcome) {
	name := o.dest.Name()
	switch {
	case o.failure != nil:
		r.metrics.Attempts.WithLabelValues(name, string(o.failure.Class)).Inc()
		if o.failure.Class.IsTLS() {
			r.metrics.TLSFailures.WithLabelValues(name, string(o.failure.Class)).Inc()
		}
	case o.delivered:
		r.metrics.Attempts.WithLabelValues(name, "delivered").Inc()
		r.metrics.DeliveryLatency.WithLabelValues(name).Observe(r.now().Sub(env.Received).Seconds())
	default:
		r.metrics.Attempts.WithLabelValues(name, "refused").Inc()
	}
}
