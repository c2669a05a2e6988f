package relay

import (
	"errors"
	"io"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/headerfrom"
)

// The From header is rewritten (header_from = "rewrite") once, at
// acceptance, before the relay's DKIM signature is made and before the
// message is spooled: the signature then covers the From and Reply-To the
// upstream receives, and verifies at the receiver. A message has one
// header for all its recipients, so a transaction whose recipients go to
// a rewriting destination holds only recipients whose destinations make
// the same rewrite (to the same mailbox); any other recipient gets 452
// 4.5.3 and is sent in a following transaction, as for reject mode.

// headerFromOf is the mailbox dest rewrites the From header to, "" when
// it does not.
func headerFromOf(dest *policy.Destination) string {
	if dest.Rewrite.HeaderFrom {
		return dest.Rewrite.EnvelopeFrom
	}
	return ""
}

// rewriteCheck checks a recipient routed to dest against the
// transaction's rewrite, which its first recipient decides.
func (s *session) rewriteCheck(dest *policy.Destination) *smtp.SMTPError {
	mb := headerFromOf(dest)
	if len(s.rcpts) > 0 && mb != s.headerFrom {
		why := dest.Name() + " rewrites the From header to " + mb + " (header_from = \"rewrite\")"
		switch {
		case mb == "":
			why = "the recipients so far go to " + s.rewriteDest.Name() + ", which rewrites the From header to " + s.headerFrom + " (header_from = \"rewrite\")"
		case s.headerFrom != "":
			why += " and the recipients so far go to " + s.rewriteDest.Name() + ", which rewrites it to " + s.headerFrom
		}
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: clip("Send recipients of "+dest.Name()+" in a separate transaction: "+why+"; a message has one header for all its recipients", 490)}
	}
	return nil
}

// rewriteRecord records a recipient accepted for dest.
func (s *session) rewriteRecord(dest *policy.Destination) {
	if len(s.rcpts) == 0 {
		s.headerFrom = headerFromOf(dest)
		s.dests = s.dests[:0]
		if s.headerFrom != "" {
			s.rewriteDest = dest
		}
	}
	if !containsDest(s.dests, dest) {
		s.dests = append(s.dests, dest)
	}
}

func containsDest(ds []*policy.Destination, d *policy.Destination) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

// rewriteStale returns a 451 when a reload replaced a destination of the
// transaction since RCPT and the rewrite the transaction would get is no
// longer the one decided then: the client sends the message again and it
// is routed and rewritten under the policy now in force.
func (s *session) rewriteStale() *smtp.SMTPError {
	for _, d := range s.dests {
		if s.relay.inForce(d) {
			continue
		}
		for _, rc := range s.rcpts {
			dest := s.relay.route(s.sender, domainOf(rc))
			if dest == nil || headerFromOf(dest) != s.headerFrom {
				return policyChanged(d)
			}
		}
		return nil
	}
	return nil
}

// bodyWriter returns where the client's data goes: the spool file, or
// for a rewriting transaction the rewrite in front of it. finish, called
// after the data's last byte, returns the reply for a message whose From
// cannot be rewritten, or the error of writing what the rewrite still
// held.
func (s *session) bodyWriter(w io.Writer, id string) (io.Writer, func() (*smtp.SMTPError, error)) {
	if s.headerFrom == "" {
		return w, func() (*smtp.SMTPError, error) { return nil, nil }
	}
	hw := headerfrom.NewWriter(w, s.headerFrom)
	return hw, func() (*smtp.SMTPError, error) {
		res, err := hw.Close()
		var he *headerfrom.Error
		if errors.As(err, &he) {
			s.log.Warn("message refused: its From header cannot be rewritten", "id", id, "destination", s.rewriteDest.Name(), "reason", he.Why)
			s.relay.countReject("header_from")
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
				Message: clip("Message refused: "+s.rewriteDest.Name()+" rewrites the From header to "+s.headerFrom+
					" (header_from = \"rewrite\"), and "+he.Why+"; nothing of it was accepted", 490)}, nil
		}
		if err != nil {
			return nil, err
		}
		if res.Rewritten {
			s.log.Info("From header rewritten", "id", id, "destination", s.rewriteDest.Name(), "from", res.Original,
				"to", s.headerFrom, "reply_to_added", res.ReplyTo)
		}
		return nil, nil
	}
}
