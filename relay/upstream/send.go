package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
)

// Result is the outcome of sending one message over a connection.
type Result struct {
	// Refused holds, per recipient, the failure of a recipient the
	// upstream did not take. Recipients not in it were delivered.
	Refused map[string]*policy.Failure
	// Reply is the upstream's reply to the end of DATA.
	Reply string
}

// Send transfers one message: MAIL, RCPT for each recipient, DATA with
// the body as it is (dot-stuffing aside). It returns a *policy.Failure when
// the message as a whole did not go (MAIL or DATA refused, connection
// lost); recipients refused one by one are in Result.Refused. With
// allOrNothing, one refused recipient ends the transaction before DATA,
// so that nothing is delivered unless everything can be.
func (c *Conn) Send(ctx context.Context, from string, rcpts []string, body io.Reader, allOrNothing bool) (Result, error) {
	res := Result{Refused: map[string]*policy.Failure{}}
	// go-smtp bounds each command itself; ctx ends a delivery early (at
	// shutdown, or delivery_timeout) by interrupting the I/O in progress.
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	reused := c.sent > 0
	if c.open {
		if err := c.client.Reset(); err != nil {
			return res, smtpFailure(c.Dest, "RSET", fmt.Errorf("%w: %w", ErrConnStale, err))
		}
		c.open = false
	}
	c.sent++
	// After a completed transaction the server is ready for the next one
	// (RFC 5321, 4.1.1.4), so no RSET: one round trip less per message.
	c.open = true
	if err := c.client.Mail(from, nil); err != nil {
		var se *smtp.SMTPError
		if reused && (!errors.As(err, &se) || se.Code == 421) {
			// The upstream closed the idle connection (or is closing it):
			// nothing of this message was sent.
			err = fmt.Errorf("%w: %w", ErrConnStale, err)
		}
		return res, smtpFailure(c.Dest, "MAIL FROM", err)
	}
	accepted := 0
	for _, r := range rcpts {
		if err := c.client.Rcpt(r, nil); err != nil {
			f := smtpFailure(c.Dest, "RCPT TO", err)
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return res, f // the connection broke: nothing went
			}
			res.Refused[r] = f
			continue
		}
		accepted++
	}
	if accepted == 0 || allOrNothing && len(res.Refused) > 0 {
		if c.client.Reset() == nil {
			c.open = false
		}
		return res, nil
	}
	w, err := c.client.Data()
	if err != nil {
		return res, smtpFailure(c.Dest, "DATA", err)
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Close()
		return res, smtpFailure(c.Dest, "DATA", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return res, smtpFailure(c.Dest, "end of DATA", err)
	}
	res.Reply = resp.StatusText
	c.open = false
	return res, nil
}

// Sent reports how many messages this connection has carried.
func (c *Conn) Sent() int { return c.sent }

// smtpFailure classifies an error from the SMTP dialogue: a reply from
// the upstream (4xx temporary, 5xx permanent) or a broken connection.
func smtpFailure(dest *policy.Destination, stage string, err error) *policy.Failure {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		f := &policy.Failure{Host: dest.Upstream, Err: err,
			Detail: fmt.Sprintf("the upstream answered %s with %d %s", stage, se.Code, replyText(se))}
		if se.Code/100 == 5 {
			f.Class, f.Permanent = policy.UpstreamPermanent, true
			f.Fix = "the upstream refused this; its reply says why"
		} else {
			f.Class = policy.UpstreamTemporary
			f.Fix = "the upstream asked to try later; the relay will"
		}
		return f
	}
	var ne net.Error
	class := policy.Protocol
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		class = policy.Connect
	}
	return &policy.Failure{Class: class, Host: dest.Upstream, Err: err,
		Detail: fmt.Sprintf("the SMTP dialogue failed at %s: %v", stage, err),
		Fix:    "the connection to the upstream broke or it spoke something other than SMTP; the relay will retry"}
}

func replyText(se *smtp.SMTPError) string {
	if se.EnhancedCode != smtp.NoEnhancedCode && se.EnhancedCode != smtp.EnhancedCodeNotSet {
		return fmt.Sprintf("%d.%d.%d %s", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	return se.Message
}
