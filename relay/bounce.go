package relay

import (
	"bytes"
	"fmt"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/dsn"
	"tlsrelay/relay/headerfrom"
	"tlsrelay/relay/spool"
)

// bounce sends the sender a DSN for the recipients that failed, if any.
// The null sender (a DSN itself) is never bounced, so bounces cannot loop.
func (r *Relay) bounce(msg *spool.Message, st spool.State) error {
	var failed []spool.Recipient
	for _, rc := range st.Recipients {
		if rc.Status == spool.StatusFailed {
			failed = append(failed, rc)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	if msg.From == "" {
		r.log.Warn("message to the null sender failed; not bounced", "id", msg.ID, "failed", len(failed))
		return nil
	}
	return r.sendReport(msg, dsn.Failed, failed)
}

// delayNotice tells the sender that the message is still being retried.
func (r *Relay) delayNotice(msg *spool.Message, st spool.State) error {
	var pending []spool.Recipient
	for _, rc := range st.Recipients {
		if rc.Status == spool.StatusPending {
			pending = append(pending, rc)
		}
	}
	if msg.From == "" || len(pending) == 0 {
		return nil
	}
	return r.sendReport(msg, dsn.Delayed, pending)
}

// sendReport writes a DSN into the spool as a new message from <> to the
// original sender, routed by the same policies as any other mail.
func (r *Relay) sendReport(msg *spool.Message, action dsn.Action, rcpts []spool.Recipient) error {
	cfg := r.Config()
	dest := r.Config().Table.Lookup(domainOf(msg.From)) // from <>: by recipient alone
	if dest == nil {
		r.log.Warn("no destination for the sender's domain; DSN dropped", "id", msg.ID, "sender", msg.From, "action", string(action))
		return nil
	}
	rep := &dsn.Report{
		Action:       action,
		ReportingMTA: cfg.Server.Hostname,
		QueueID:      msg.ID,
		Sender:       msg.From,
		Arrival:      msg.Received,
		RetryUntil:   msg.Received.Add(cfg.Queue.MaxAge.Duration),
		Headers:      dsn.ReadHeaders(msg.Body()),
		UTF8:         msg.UTF8,
	}
	for _, rc := range rcpts {
		rep.Recipients = append(rep.Recipients, dsn.Recipient{
			Addr:        rc.Addr,
			Status:      statusCode(policy.Class(rc.Class), rc.Expired, action == dsn.Failed),
			Destination: rc.Destination,
			RemoteMTA:   upstreamOf(r, rc.Destination),
			Class:       nonEmpty(rc.Class, "unknown"),
			Detail:      rc.Reason,
			Fix:         rc.Fix,
			LastAttempt: rc.When,
		})
	}
	body := rep.Build(r.now())
	p, err := r.store.Create(spool.Envelope{From: "", Recipients: []string{msg.From}, Received: time.Now().UTC(), Bounce: true,
		UTF8: rep.International()})
	if err != nil {
		return err
	}
	if mb := headerFromOf(dest); mb != "" {
		// The DSN goes through a destination that rewrites the From
		// header: its From (MAILER-DAEMON) becomes that mailbox too, or
		// the upstream would refuse it as it would the application's mail.
		var out bytes.Buffer
		w := headerfrom.NewWriter(&out, mb)
		w.Write(body)
		if _, err := w.Close(); err == nil {
			body = out.Bytes()
		}
	}
	if _, err := bytes.NewReader(body).WriteTo(p); err != nil {
		p.Abort()
		return err
	}
	if err := p.Commit(); err != nil {
		return err
	}
	r.log.Info("DSN queued", "id", p.ID(), "about", msg.ID, "action", string(action), "to", msg.From, "rcpts", len(rcpts))
	r.queue.add(p.Envelope())
	return nil
}

func upstreamOf(r *Relay, destName string) string {
	for _, d := range r.Config().Table.Destinations() {
		if d.Name() == destName {
			return d.Upstream
		}
	}
	return ""
}

// statusCode is the RFC 3463 status for a failure class.
func statusCode(c policy.Class, expired, final bool) string {
	class := "4"
	if final {
		class = "5"
	}
	switch {
	case c == policy.StartTLSMissing:
		return class + ".7.10"
	case c == policy.RequireTLS:
		return class + ".7.30"
	case c == policy.NullMX:
		return "5.1.10"
	case c == policy.NoSuchDomain:
		return "5.1.2"
	case c == policy.DNS:
		return class + ".4.3"
	case c == policy.MXSecurityFailure:
		return class + ".7.5"
	case c.IsTLS():
		return class + ".7.5"
	case c == policy.Auth:
		return class + ".7.0"
	case c == policy.NoRoute:
		return class + ".4.4"
	case c == policy.UpstreamPermanent:
		return "5.0.0"
	case expired && final:
		return "5.4.7" // delivery time expired
	}
	return fmt.Sprintf("%s.4.1", class)
}
