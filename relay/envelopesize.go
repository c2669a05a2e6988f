package relay

import (
	"fmt"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/spool"
)

// envelopeReserve is the room kept in spool.MaxEnvelopeBytes for what the
// RCPT tally does not count: the queue id, the times and the size, the
// field names, and a DKIM-Signature added after DATA (well under a few
// KiB, even with a long list of signed header fields).
const envelopeReserve = 64 << 10

// envelopeRoom refuses recipient to when the envelope with it could not be
// committed to the spool: an envelope larger than spool.MaxEnvelopeBytes
// would otherwise be refused only after DATA, or worse. It keeps a running
// tally of the envelope's encoded size per transaction (an upper bound,
// with envelopeReserve), started again at the transaction's first
// recipient; called by Rcpt just before it appends to.
func (s *session) envelopeRoom(to string) error {
	if len(s.rcpts) == 0 {
		s.envBytes = envelopeReserve + spool.EncodedLen(s.from) + spool.EncodedLen(s.helo) + spool.EncodedLen(s.client)
	}
	n := spool.EncodedLen(to) + 1 // and a comma
	if s.envBytes+n > spool.MaxEnvelopeBytes {
		s.relay.countReject("too_large")
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: fmt.Sprintf("Too many recipients: with this one the envelope would exceed the %d bytes the spool can store; send the remaining recipients in another transaction", spool.MaxEnvelopeBytes)}
	}
	s.envBytes += n
	return nil
}
