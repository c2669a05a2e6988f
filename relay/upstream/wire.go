package upstream

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
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

// The bounds of one reply, the same before TLS (where anyone on the path
// may write it) and after: an upstream cannot make the relay hold an
// endless line, an endless reply or an endless list of EHLO keywords in
// memory. Each is far above what a mail server sends (RFC 5321, 4.5.3.1.5:
// 512 octets a line).
const (
	// maxReply bounds the bytes read for one reply.
	maxReply = 64 << 10
	// maxReplyLine bounds one line of a reply, CRLF included; it is also
	// the size of the read buffer.
	maxReplyLine = 4 << 10
	// maxReplyLines bounds the lines of one reply, and so the keywords
	// of an EHLO reply.
	maxReplyLines = 100
)

// errReplyTooLong is returned, wrapped with the bound that was exceeded,
// when a reply exceeds maxReply, maxReplyLine or maxReplyLines.
var errReplyTooLong = errors.New("the upstream's reply is too long")

var (
	errReplyOverBytes = fmt.Errorf("%w (more than %d KiB)", errReplyTooLong, maxReply>>10)
	errReplyOverLine  = fmt.Errorf("%w (a line of more than %d KiB)", errReplyTooLong, maxReplyLine>>10)
	errReplyOverLines = fmt.Errorf("%w (more than %d lines)", errReplyTooLong, maxReplyLines)
)

// errMalformedReply is wrapped by the errors for replies that are not
// SMTP replies.
var errMalformedReply = errors.New("malformed reply")

// cutOffError is a reply line that ended without its CRLF because the
// connection failed (timed out, closed) in the middle of it: the reply is
// incomplete, whatever its first bytes say. Err is the connection's error.
type cutOffError struct {
	Partial int // how many bytes of the line had arrived
	Err     error
}

func (e *cutOffError) Error() string {
	return fmt.Sprintf("the reply was cut off after %d bytes: %v", e.Partial, e.Err)
}

func (e *cutOffError) Unwrap() error { return e.Err }

// budgetReader fails once more than its budget has been read from it.
type budgetReader struct {
	r      io.Reader
	budget int
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.budget <= 0 {
		return 0, errReplyOverBytes
	}
	n, err := b.r.Read(p[:min(len(p), b.budget)])
	b.budget -= n
	return n, err
}

// readReply reads one complete reply, of any code, within the bounds
// above. Only a CRLF (or LF) ends a line: a line cut off by a timeout or
// a close is an error (*cutOffError), never taken as the whole reply.
func (c *Conn) readReply() (reply, error) {
	c.budget.budget = maxReply // bytes read ahead for this reply were charged to the last
	var text []string
	code := 0
	for {
		line, err := c.readLine()
		if err != nil {
			return reply{}, err
		}
		if len(text) == maxReplyLines {
			return reply{}, errReplyOverLines
		}
		n, last, rest, ok := parseReplyLine(line)
		switch {
		case !ok:
			return reply{}, fmt.Errorf("%w: %q", errMalformedReply, clipLine(line))
		case code != 0 && n != code:
			return reply{}, fmt.Errorf("%w: a line of a %d reply has code %d", errMalformedReply, code, n)
		}
		code = n
		text = append(text, rest)
		if last {
			return reply{code: code, text: strings.Join(text, "\n")}, nil
		}
	}
}

// readLine reads one line and strips its line ending.
func (c *Conn) readLine() (string, error) {
	b, err := c.br.ReadSlice('\n')
	switch {
	case err == bufio.ErrBufferFull:
		return "", errReplyOverLine
	case err != nil && len(b) > 0 && !errors.Is(err, errReplyTooLong):
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", &cutOffError{Partial: len(b), Err: err}
	case err != nil:
		return "", err
	}
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return string(b), nil
}

// parseReplyLine splits a reply line (RFC 5321, 4.2): a code of three
// digits, the first 2 to 5, then a space (the last line), a hyphen (more
// follow) or nothing (a last line without text).
func parseReplyLine(line string) (code int, last bool, text string, ok bool) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false, "", false
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if len(line) == 3 {
		return code, true, "", true
	}
	switch line[3] {
	case ' ':
		return code, true, line[4:], true
	case '-':
		return code, false, line[4:], true
	}
	return 0, false, "", false
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// clipLine shortens a line quoted in an error.
func clipLine(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
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

// newWire sets up bounded reading and buffered writing over rw: the TCP
// connection for the plaintext part of STARTTLS, the TLS connection after.
func (c *Conn) newWire(rw io.ReadWriter) {
	c.budget = &budgetReader{r: rw}
	c.br = bufio.NewReaderSize(c.budget, maxReplyLine)
	c.w = bufio.NewWriterSize(rw, writeBuffer)
}
