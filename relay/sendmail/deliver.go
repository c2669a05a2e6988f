package sendmail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"tlsrelay/relay/drop"
)

// Relay is where sendmail hands messages over.
type Relay struct {
	// Addr is the relay's front door (drop.DialAddr of its listen).
	Addr string
	// Helo is the name sendmail gives in EHLO.
	Helo string
	// DropDir keeps a message the relay cannot take now; "" when the
	// drop is off.
	DropDir string
}

// Outcome says what became of a message handed over without error.
type Outcome struct {
	// Replies are the relay's answers to the data ("2.0.0 OK queued as …").
	Replies []string
	// Dropped is the drop file when the relay could not take the message
	// now, and Why says why.
	Dropped string
	Why     error
}

// TempError means the message could not be handed over and could not be
// kept either (EX_TEMPFAIL): the caller must try again.
type TempError struct {
	Relay error // why the relay did not take it
	Drop  error // why it could not be dropped
}

func (e *TempError) Error() string {
	if e.Drop == nil {
		return e.Relay.Error()
	}
	return fmt.Sprintf("%v; and it could not be kept in the drop directory: %v", e.Relay, e.Drop)
}

// Deliver hands msg to the relay; when the relay cannot take it now (not
// reachable, the connection lost, a 4xx reply), it keeps it in the drop
// directory, from which the relay imports it as soon as it can. A refusal
// for good comes back as drop.RecipientsRefusedError or
// drop.RejectedError.
func (r *Relay) Deliver(ctx context.Context, msg *Message) (Outcome, error) {
	replies, err := drop.Submit(ctx, r.Addr, r.Helo, msg.Envelope, func() (io.Reader, error) {
		return bytes.NewReader(msg.Data), nil
	})
	if err == nil {
		return Outcome{Replies: replies}, nil
	}
	var ue *drop.UnreachableError
	var te *drop.TemporaryError
	if !errors.As(err, &ue) && !errors.As(err, &te) {
		return Outcome{Replies: replies}, err
	}
	if len(replies) > 0 {
		// Part of the recipients (an earlier transaction) has it: keep
		// only the rest, so none gets it twice.
		return Outcome{Replies: replies}, &TempError{Relay: err, Drop: errors.New("not kept, since the relay has already queued it for some of the recipients")}
	}
	if r.DropDir == "" {
		return Outcome{}, &TempError{Relay: err, Drop: errors.New("the drop directory is off ([sendmail] drop = false)")}
	}
	name, derr := drop.Write(r.DropDir, msg.Envelope, msg.Data)
	if derr != nil {
		return Outcome{}, &TempError{Relay: err, Drop: derr}
	}
	return Outcome{Dropped: name, Why: err}, nil
}
