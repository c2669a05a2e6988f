package policy

import (
	"net/mail"
	"strings"
)

// maxLimit bounds the numeric limits, so that a typo (an extra digit or
// two) is caught rather than taken as "no limit".
const maxLimit = 100000

// compileRouting checks and compiles the keys that choose and shape the
// mail a destination gets: senders, limits and rewriting. It returns one
// error per wrong key.
func (d *Destination) compileRouting(s Spec) []error {
	var errs []error
	for _, raw := range s.Senders {
		p, err := ParseSenderPattern(raw)
		switch {
		case err != nil:
			errs = append(errs, fieldErr("senders", "%v", err))
		case p.IsAny():
			errs = append(errs, fieldErr("senders", `"*" is not a sender pattern for a destination: a destination without senders already takes every sender; remove the senders key, or name the senders (e.g. "*@example.com")`))
		default:
			d.Senders = append(d.Senders, p)
		}
	}
	limit := func(key string, v int, dst *int, example string) {
		if v < 0 || v > maxLimit {
			errs = append(errs, fieldErr(key, "%d is out of range: write a number from 1 to %d (e.g. %s), or leave the key out for no limit", v, maxLimit, example))
			return
		}
		*dst = v
	}
	limit("max_connections", s.MaxConnections, &d.Limits.MaxConnections, "max_connections = 3")
	limit("max_messages_per_minute", s.MaxMessagesPerMinute, &d.Limits.MaxMessagesPerMinute, "max_messages_per_minute = 60")
	limit("max_recipients_per_message", s.MaxRecipientsPerMessage, &d.Limits.MaxRecipientsPerMessage, "max_recipients_per_message = 100")

	if s.EnvelopeFrom != "" {
		p, err := ParseSenderPattern(s.EnvelopeFrom)
		if err != nil || !p.IsAddress() || strings.HasPrefix(p.domain, "[") {
			errs = append(errs, fieldErr("envelope_from", "%q is not a mailbox; write the address the upstream lets you send as, e.g. envelope_from = \"app@contoso.com\"", s.EnvelopeFrom))
		} else {
			raw := strings.TrimSpace(s.EnvelopeFrom)
			d.Rewrite.EnvelopeFrom = raw[:strings.LastIndexByte(raw, '@')] + "@" + p.domain // the local part keeps its case
		}
	}
	switch s.HeaderFrom {
	case "", "keep":
	case "rewrite":
		// The rewrite happens at acceptance, before the relay's DKIM
		// signature is made (see relay/headerfrom and README).
		switch {
		case s.EnvelopeFrom == "":
			errs = append(errs, fieldErr("header_from", `"rewrite" replaces the From address with envelope_from, which is not set; add envelope_from = "the mailbox the upstream lets you send as"`))
		case d.Rewrite.EnvelopeFrom == "":
			// envelope_from is reported already.
		default:
			if a, err := mail.ParseAddress("<" + d.Rewrite.EnvelopeFrom + ">"); err != nil || a.Address != d.Rewrite.EnvelopeFrom {
				errs = append(errs, fieldErr("header_from", "envelope_from %q cannot be written in a From header; use a plain address such as \"app@contoso.com\"", d.Rewrite.EnvelopeFrom))
			} else {
				d.Rewrite.HeaderFrom = true
			}
		}
	default:
		errs = append(errs, fieldErr("header_from", "%q is not a choice; write \"rewrite\" (replace the From address with envelope_from) or \"keep\" (the default)", s.HeaderFrom))
	}
	return errs
}
