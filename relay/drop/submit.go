package drop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// UnreachableError means no SMTP session with the relay could be opened:
// nothing was sent.
type UnreachableError struct {
	Addr string
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("the relay at %s cannot be reached: %v", e.Addr, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// TemporaryError means the relay answered 4xx or the session broke before
// the message was accepted: it may be tried again later.
type TemporaryError struct {
	Stage string // "greeting", "MAIL FROM", "RCPT TO", "DATA", "end of data"
	Err   error
}

func (e *TemporaryError) Error() string {
	return fmt.Sprintf("the relay cannot take the message now (at %s): %v", e.Stage, e.Err)
}

func (e *TemporaryError) Unwrap() error { return e.Err }

// RejectedError means the relay refused the sender or the message for
// good (a 5xx reply to the greeting, MAIL or the data).
type RejectedError struct {
	Stage string
	Reply *smtp.SMTPError
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("the relay refused the message at %s: %d %s", e.Stage, e.Reply.Code, replyText(e.Reply))
}

// Refusal is one recipient the relay refused for good, and its reply.
type Refusal struct {
	Recipient string
	Reply     *smtp.SMTPError
}

// RecipientsRefusedError means the relay refused one or more recipients
// for good. The transaction was then reset: none of the recipients of
// that transaction got the message.
type RecipientsRefusedError struct {
	Refused []Refusal
	// Queued are the replies to transactions that went before (a
	// destination in reject mode gets a transaction of its own), empty
	// in the common case.
	Queued []string
}

func (e *RecipientsRefusedError) Error() string {
	var b strings.Builder
	for i, r := range e.Refused {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "<%s>: %d %s", r.Recipient, r.Reply.Code, replyText(r.Reply))
	}
	return "the relay refused " + b.String()
}

func replyText(e *smtp.SMTPError) string {
	if e.EnhancedCode != (smtp.EnhancedCode{}) && e.EnhancedCode != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d.%d.%d %s", e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
	}
	return e.Message
}

// Timeouts of a submission to the relay on this machine.
const (
	dialTimeout    = 10 * time.Second
	commandTimeout = 2 * time.Minute
	dataTimeout    = 10 * time.Minute
)

// Submit hands one message to the relay's front door at addr, saying
// helo, and returns the relay's replies to the data (one per transaction:
// "2.0.0 OK queued as …"). body is called once per transaction and must
// return the message from its start.
//
// A recipient answered 452 (a destination in reject mode wants a
// transaction of its own, or max_recipients was reached) goes in a
// following transaction, as standard clients do. A recipient refused for
// good resets the transaction, so that either every recipient of a
// transaction gets the message or none does.
func Submit(ctx context.Context, addr, helo string, env Envelope, body func() (io.Reader, error)) ([]string, error) {
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &UnreachableError{Addr: addr, Err: err}
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout = commandTimeout
	c.SubmissionTimeout = dataTimeout
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := c.Hello(helo); err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return nil, &UnreachableError{Addr: addr, Err: err}
		}
		return nil, classify("greeting", err)
	}
	var replies []string
	remaining := env.Recipients
	for len(remaining) > 0 {
		opts := &smtp.MailOptions{}
		if ok, _ := c.Extension("8BITMIME"); ok && env.EightBit {
			opts.Body = smtp.Body8BitMIME
		}
		if ok, _ := c.Extension("SMTPUTF8"); ok && !isASCII(env.From, remaining) {
			opts.UTF8 = true
		}
		if err := c.Mail(env.From, opts); err != nil {
			return replies, classify("MAIL FROM", err)
		}
		var accepted, later []string
		var refused []Refusal
		var firstLater error
		for _, rc := range remaining {
			err := c.Rcpt(rc, nil)
			var se *smtp.SMTPError
			switch {
			case err == nil:
				accepted = append(accepted, rc)
			case errors.As(err, &se) && se.Code >= 500:
				refused = append(refused, Refusal{Recipient: rc, Reply: se})
			case errors.As(err, &se):
				later = append(later, rc)
				if firstLater == nil {
					firstLater = err
				}
			default:
				return replies, &TemporaryError{Stage: "RCPT TO", Err: err}
			}
		}
		if len(refused) > 0 {
			c.Reset()
			return replies, &RecipientsRefusedError{Refused: refused, Queued: replies}
		}
		if len(accepted) == 0 {
			c.Reset()
			return replies, &TemporaryError{Stage: "RCPT TO", Err: firstLater}
		}
		w, err := c.Data()
		if err != nil {
			return replies, classify("DATA", err)
		}
		r, err := body()
		if err != nil {
			return replies, err
		}
		if _, err := io.Copy(w, r); err != nil {
			return replies, &TemporaryError{Stage: "DATA", Err: err}
		}
		resp, err := w.CloseWithResponse()
		if err != nil {
			return replies, classify("end of data", err)
		}
		replies = append(replies, resp.StatusText)
		remaining = later
	}
	c.Quit()
	return replies, nil
}

// classify turns a failed step into a TemporaryError or a RejectedError.
func classify(stage string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 {
		return &RejectedError{Stage: stage, Reply: se}
	}
	return &TemporaryError{Stage: stage, Err: err}
}

func isASCII(from string, rcpts []string) bool {
	for _, s := range append([]string{from}, rcpts...) {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}

// DialAddr returns the address to dial for a relay listening on listen:
// an unspecified address (0.0.0.0, ::, or none) is reached over loopback.
func DialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}
