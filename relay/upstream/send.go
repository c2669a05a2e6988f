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
	// Reply is the upstream's reply to the end of the message.
	Reply string
}

// Body is a message's content exactly as it goes on the wire (CRLF line
// ends, no dot-stuffing): Size bytes each time Open is called. Send may
// open it twice: a message that met a stale pooled connection goes again
// over a fresh one.
type Body struct {
	Size int64
	Open func() io.Reader
	// UTF8 is set for a message submitted with SMTPUTF8 (spool.Envelope's
	// UTF8): it goes upstream with SMTPUTF8 when the upstream offers it.
	UTF8 bool
	// RequireTLS is set for a message submitted with REQUIRETLS
	// (spool.Envelope's RequireTLS): it goes only to an upstream that
	// offers REQUIRETLS, with REQUIRETLS on MAIL FROM (RFC 8689).
	RequireTLS bool
}

// Send transfers one message: MAIL, RCPT for each recipient, then the
// body. It returns a *policy.Failure when the message as a whole did not
// go (MAIL or the body refused, connection lost); recipients refused one
// by one are in Result.Refused. With allOrNothing, one refused recipient
// ends the transaction before the body is sent, so that nothing is
// delivered unless everything can be.
//
// When the upstream offers PIPELINING and CHUNKING, the whole transaction
// (RSET if one is due, MAIL, RCPT, BDAT LAST with the body) is one write
// and its replies one read: a single round trip per message. Without
// them it falls back step by step to plain SMTP with DATA.
//
// from and rcpts are parsed again (address.Parse) and the command lines
// are written from the parsed form, never from the strings: an address
// that does not parse, or a non-ASCII one for an upstream without
// SMTPUTF8, is a permanent failure (of the message for the sender, of
// that recipient alone otherwise) and is never written. MAIL FROM
// carries SMTPUTF8 when an address needs it or body.UTF8 asks for it and
// the upstream offers it.
func (c *Conn) Send(ctx context.Context, from string, rcpts []string, body Body, allOrNothing bool) (Result, error) {
	res := Result{Refused: map[string]*policy.Failure{}}
	env, err := c.envelope(from, rcpts, body.UTF8, res.Refused)
	if err != nil {
		return res, err
	}
	if body.RequireTLS && !c.has("REQUIRETLS") {
		return res, &policy.Failure{Class: policy.RequireTLS, Host: c.Dest.Upstream,
			Detail: "the message was sent with REQUIRETLS, and this upstream does not offer REQUIRETLS (RFC 8689); nothing was sent",
			Fix:    "the message can only go to a next hop that offers REQUIRETLS; the sender may resend without REQUIRETLS if TLS on every hop is not required"}
	}
	env.requireTLS = body.RequireTLS
	if len(env.rcpts) == 0 || allOrNothing && len(res.Refused) > 0 {
		return res, nil // nothing was sent: no transaction is open
	}
	rcpts = env.rawRcpts
	// ctx ends a delivery early (at shutdown, or delivery_timeout) by
	// interrupting the I/O in progress.
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer c.raw.SetDeadline(time.Time{}) // an idle pooled connection has no deadline
	reused := c.sent > 0
	c.sent++

	pipelining := c.has("PIPELINING")
	chunking := c.has("CHUNKING")
	bodyInline := pipelining && chunking && (!allOrNothing || len(rcpts) == 1)
	x := exchange{c: c, pipelined: pipelining}
	timeout := commandTimeout
	if bodyInline {
		timeout = finalTimeout
	}
	c.setDeadline(ctx, timeout)
	// After a completed transaction the server is ready for the next one
	// (RFC 5321, 4.1.1.4); only an unfinished one needs RSET.
	rset := c.open
	if rset {
		x.send("RSET", "RSET")
	}
	c.open = true
	x.send("MAIL FROM", c.mailCommand(env))
	for _, r := range env.rcpts {
		x.send("RCPT TO", "RCPT TO:<"+r.String()+">")
	}
	if bodyInline {
		x.sendBDAT(body)
	}
	err = x.finish()
	// A pooled connection the upstream had closed while idle answers
	// nothing, or 421 to the first command: nothing of this message was
	// taken, so it goes again at once over a fresh connection.
	stale := reused && (x.lostBefore("MAIL FROM") || x.replies[0].code == 421)
	if i := x.closing(); i > 0 && !stale {
		// 421 to a command after the first (a RCPT, the body): the server
		// is closing the session (RFC 5321 4.2.3), which is the whole
		// transaction's failure — typically throttling — and not an
		// answer about one recipient.
		c.broken = true
		return res, smtpFailure(c.Dest, x.stages[i], x.replies[i].err())
	}
	if err != nil {
		if stale {
			err = fmt.Errorf("%w: %w", ErrConnStale, err)
		}
		return res, c.ioFailure(x.failedStage(), err)
	}
	replies := x.replies
	if rset {
		replies = replies[1:]
	}
	if mail := replies[0]; !mail.ok() {
		err := error(mail.err())
		if stale {
			err = fmt.Errorf("%w: %w", ErrConnStale, err)
		}
		return res, smtpFailure(c.Dest, "MAIL FROM", err)
	}
	accepted := 0
	for i, r := range rcpts {
		if rep := replies[1+i]; !rep.ok() {
			res.Refused[r] = smtpFailure(c.Dest, "RCPT TO", rep.err())
			continue
		}
		accepted++
	}
	if bodyInline {
		final := replies[1+len(rcpts)]
		if accepted == 0 {
			return res, nil // the server refused the body for want of recipients
		}
		return c.settle(res, final)
	}
	if accepted == 0 || allOrNothing && len(res.Refused) > 0 {
		return res, nil // the next transaction starts with RSET
	}
	return c.sendBody(ctx, res, body, chunking)
}

// sendBody sends the body after the envelope was accepted, when it could
// not go in the same write: BDAT LAST, or DATA and a dot-stuffed body.
func (c *Conn) sendBody(ctx context.Context, res Result, body Body, chunking bool) (Result, error) {
	x := exchange{c: c, pipelined: true}
	if chunking {
		c.setDeadline(ctx, finalTimeout)
		x.sendBDAT(body)
	} else {
		c.setDeadline(ctx, commandTimeout)
		rep, err := c.cmd("DATA")
		if err != nil {
			return res, c.ioFailure("DATA", err)
		}
		if rep.code != 354 {
			return res, smtpFailure(c.Dest, "DATA", rep.err())
		}
		c.setDeadline(ctx, finalTimeout)
		x.sendDotted(body)
	}
	if err := x.finish(); err != nil {
		return res, c.ioFailure(x.failedStage(), err)
	}
	return c.settle(res, x.replies[0])
}

// settle reads the verdict on the end of the message.
func (c *Conn) settle(res Result, final stagedReply) (Result, error) {
	if !final.ok() {
		return res, smtpFailure(c.Dest, "end of data", final.err())
	}
	res.Reply = final.text
	c.open = false
	return res, nil
}

// mailCommand is MAIL FROM with the parameters the upstream understands.
func (c *Conn) mailCommand(env envelope) string {
	line := "MAIL FROM:<" + env.from.String() + ">"
	if c.has("8BITMIME") {
		line += " BODY=8BITMIME"
	}
	if env.utf8 {
		line += " SMTPUTF8"
	}
	if env.requireTLS {
		line += " REQUIRETLS"
	}
	return line
}

func (c *Conn) has(kw string) bool {
	_, ok := c.ext[kw]
	return ok
}

// ioFailure is a failure of the connection itself; after it the dialogue
// is out of step and the connection must not be used again.
func (c *Conn) ioFailure(stage string, err error) *policy.Failure {
	c.broken = true
	var bad *badBody
	if errors.As(err, &bad) {
		return &policy.Failure{Class: policy.Protocol, Host: c.Dest.Upstream, Err: err,
			Detail: fmt.Sprintf("the spooled message could not be read back: %v", err),
			Fix:    "check the spool directory's disk; the message stays queued"}
	}
	return smtpFailure(c.Dest, stage, err)
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
			refineSenderRefusal(dest, f, se)
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
