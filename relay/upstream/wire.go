package upstream

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// The SMTP client side is written here rather than taken from go-smtp's
// client because that client sends one command per round trip. A relay
// in the path of every message wants RFC 2920 pipelining and RFC 3030
// BDAT: the whole transaction in one write, its replies in one read.

const (
	// commandTimeout bounds a command's reply (RFC 5321, 4.5.3.2 asks for
	// at least 5 minutes for MAIL and RCPT).
	commandTimeout = 5 * time.Minute
	// finalTimeout bounds the reply to the end of the message (RFC 5321,
	// 4.5.3.2.6: 10 minutes), and the sending of the body before it.
	finalTimeout = 10 * time.Minute
	// writeBuffer is one full TLS record, so a body goes out in records
	// of the largest size.
	writeBuffer = 16 << 10
)

// reply is one SMTP reply. As an error it is a *smtp.SMTPError, the type
// the rest of the relay classifies.
type reply struct {
	code int
	text string
}

// ok reports a positive completion (2xx): what MAIL, RCPT and the end of
// the body must get. DATA's 354 is checked where it is expected.
func (r reply) ok() bool { return r.code/100 == 2 }

// err returns the reply as an *smtp.SMTPError, enhanced code parsed.
func (r reply) err() *smtp.SMTPError {
	se := &smtp.SMTPError{Code: r.code, Message: r.text, EnhancedCode: smtp.NoEnhancedCode}
	first, rest, found := strings.Cut(r.text, " ")
	if !found {
		return se
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return se
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || len(p) > 3 {
			return se
		}
		ec[i] = n
	}
	se.EnhancedCode = ec
	// RFC 2034 repeats the enhanced code on every line of a reply.
	se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return se
}

// maxReply bounds the bytes read for one reply: an upstream cannot make
// the relay hold an endless line in memory.
const maxReply = 64 << 10

// errReplyTooLong is returned when a reply exceeds maxReply.
var errReplyTooLong = errors.New("the upstream's reply is longer than 64 KiB")

// budgetReader fails once more than its budget has been read from it.
type budgetReader struct {
	r      io.Reader
	budget int
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.budget <= 0 {
		return 0, errReplyTooLong
	}
	n, err := b.r.Read(p[:min(len(p), b.budget)])
	b.budget -= n
	return n, err
}

// readReply reads one reply, of any code.
func (c *Conn) readReply() (reply, error) {
	c.budget.budget = maxReply // bytes read ahead for this reply were charged to the last
	code, text, err := c.r.ReadResponse(0)
	if err != nil {
		var pe textproto.ProtocolError
		if errors.As(err, &pe) {
			return reply{}, fmt.Errorf("malformed reply: %w", err)
		}
		return reply{}, err
	}
	return reply{code: code, text: text}, nil
}

// cmd sends one command and reads its reply (not pipelined).
func (c *Conn) cmd(line string) (reply, error) {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
	if err := c.w.Flush(); err != nil {
		return reply{}, err
	}
	return c.readReply()
}

// setDeadline bounds the I/O that follows, without losing an interrupt
// that ctx (via the AfterFunc set by Send) may already have delivered.
func (c *Conn) setDeadline(ctx context.Context, d time.Duration) {
	c.raw.SetDeadline(time.Now().Add(d))
	if ctx.Err() != nil {
		c.raw.SetDeadline(time.Unix(1, 0))
	}
}

// ehlo says EHLO over TLS and records the extensions offered.
func (c *Conn) ehlo(localName string) error {
	rep, err := c.cmd("EHLO " + localName)
	if err != nil {
		return err
	}
	if rep.code != 250 {
		return rep.err()
	}
	c.ext = map[string]string{}
	lines := strings.Split(rep.text, "\n")
	for _, l := range lines[1:] {
		kw, param, _ := strings.Cut(strings.TrimSpace(l), " ")
		if kw != "" {
			c.ext[strings.ToUpper(kw)] = param
		}
	}
	return nil
}

// Extension reports whether the upstream offered an EHLO keyword over
// TLS, and its parameter.
func (c *Conn) Extension(kw string) (bool, string) {
	param, ok := c.ext[strings.ToUpper(kw)]
	return ok, param
}

// offersAuth reports whether the AUTH keyword lists mech.
func (c *Conn) offersAuth(mech string) bool {
	_, mechs := c.Extension("AUTH")
	for _, m := range strings.Fields(mechs) {
		if strings.EqualFold(m, mech) {
			return true
		}
	}
	return false
}

// saslClient is the part of go-sasl's Client that AUTH uses.
type saslClient interface {
	Start() (mech string, ir []byte, err error)
	Next(challenge []byte) (response []byte, err error)
}

// authenticate runs an AUTH exchange (RFC 4954). A refusal is returned as
// an *smtp.SMTPError.
func (c *Conn) authenticate(mech saslClient) error {
	name, ir, err := mech.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + name
	if ir != nil {
		enc := base64.StdEncoding.EncodeToString(ir)
		if enc == "" {
			enc = "=" // an empty initial response (RFC 4954, 4)
		}
		line += " " + enc
	}
	for i := 0; ; i++ {
		rep, err := c.cmd(line)
		if err != nil {
			return err
		}
		switch {
		case rep.code == 235:
			return nil
		case rep.code == 334 && i < 10:
			challenge, err := base64.StdEncoding.DecodeString(rep.text)
			if err != nil {
				c.cmd("*") // cancel the exchange
				return fmt.Errorf("the server sent a malformed AUTH challenge: %w", err)
			}
			resp, err := mech.Next(challenge)
			if err != nil {
				c.cmd("*")
				return err
			}
			line = base64.StdEncoding.EncodeToString(resp)
		default:
			return rep.err()
		}
	}
}

// quit says QUIT and waits briefly for the reply; the connection is
// closed by the caller either way.
func (c *Conn) quit() {
	c.raw.SetDeadline(time.Now().Add(5 * time.Second))
	c.cmd("QUIT")
}

// newWire sets up buffered reading and writing over the TLS connection.
func (c *Conn) newWire() {
	c.budget = &budgetReader{r: c.tc}
	c.r = textproto.NewReader(bufio.NewReaderSize(c.budget, 4096))
	c.w = bufio.NewWriterSize(c.tc, writeBuffer)
}
