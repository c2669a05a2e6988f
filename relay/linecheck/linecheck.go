// Package linecheck enforces SMTP's line discipline on what a client
// sends: only CRLF ends a line. A bare CR or a bare LF is how SMTP
// smuggling works — a server and the next hop disagree on where a line,
// and so the message, ends — so tlsrelay refuses them instead of guessing.
//
// Conn works on the raw byte stream, before go-smtp parses it: it turns
// every bare CR and bare LF into a NUL byte, which can never end a line and
// is itself forbidden in SMTP text. go-smtp then sees one long, invalid
// line where a smuggler hoped for two, and the message check below (Reader)
// refuses the data. Reader works on the message data as go-smtp hands it to
// the session and refuses NUL, bare CR and bare LF; it alone covers
// sessions whose bytes Conn cannot see (inside inbound STARTTLS) and BDAT.
package linecheck

import (
	"bytes"
	"errors"
	"net"
)

// Conn applies the line discipline to everything read from a client
// connection. After a "STARTTLS" line, if the next byte starts a TLS
// record, it steps aside: what follows is TLS, whose bytes it must not
// touch (the go-smtp server wraps this Conn in tls.Server).
type Conn struct {
	net.Conn
	pendingCR   bool
	line        []byte // the start of the current line, to spot STARTTLS
	lastLine    string // the previous complete line, upper-cased
	atLineStart bool
	passthrough bool
	in          []byte
	buf         []byte // backing store of out, reused for every read
	out         []byte // transformed bytes not yet returned
	err         error  // an error to return once out is drained
}

// NewConn wraps c. startTLS says whether the server offers STARTTLS, so
// that only then does a TLS record after STARTTLS switch Conn off.
func NewConn(c net.Conn, startTLS bool) *Conn {
	lc := &Conn{Conn: c, atLineStart: true, in: make([]byte, 4096), buf: make([]byte, 0, 4096+1)}
	if !startTLS {
		lc.lastLine = "-" // never matches, so never steps aside
	}
	return lc
}

// maxLineStart is how much of a line Conn remembers: enough for STARTTLS.
const maxLineStart = 16

// recordTypeHandshake is the first byte of a TLS ClientHello record.
const recordTypeHandshake = 0x16

func (c *Conn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			err := c.err
			c.err = nil
			return 0, err
		}
		if c.passthrough {
			return c.Conn.Read(p)
		}
		n, err := c.Conn.Read(c.in)
		c.out = c.transform(c.buf[:0], c.in[:n])
		if err != nil && c.pendingCR {
			// The stream ended after a CR: it was bare.
			c.pendingCR = false
			c.out = append(c.out, 0)
		}
		if err != nil && len(c.out) == 0 {
			return 0, err
		}
		c.err = err
		// With nothing out yet, only a CR arrived: its meaning depends on
		// the next byte, so read on.
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// transform appends to out the disciplined form of in.
func (c *Conn) transform(out, in []byte) []byte {
	for i := 0; i < len(in); i++ {
		// Fast path: copy the run up to the next CR or LF in one go; only
		// the start of a line needs byte-wise attention (STARTTLS).
		if !c.pendingCR && !c.atLineStart {
			j := bytes.IndexAny(in[i:], "\r\n")
			if j < 0 {
				j = len(in) - i
			}
			if j > 0 {
				out = append(out, in[i:i+j]...)
				if room := maxLineStart - len(c.line); room > 0 {
					c.line = append(c.line, in[i:i+min(j, room)]...)
				}
				i += j - 1
				continue
			}
		}
		b := in[i]
		if c.atLineStart && b == recordTypeHandshake && c.lastLine == "STARTTLS" && !c.pendingCR {
			c.passthrough = true
			return append(out, in[i:]...)
		}
		if c.pendingCR {
			c.pendingCR = false
			if b == '\n' {
				out = append(out, '\r', '\n')
				c.endLine()
				continue
			}
			out = append(out, 0) // the bare CR
			c.note(0)
		}
		switch b {
		case '\r':
			c.pendingCR = true
		case '\n':
			out = append(out, 0) // a bare LF
			c.note(0)
		default:
			out = append(out, b)
			c.note(b)
		}
	}
	return out
}

func (c *Conn) note(b byte) {
	c.atLineStart = false
	if len(c.line) < maxLineStart {
		c.line = append(c.line, b)
	}
}

func (c *Conn) endLine() {
	if c.lastLine != "-" {
		c.lastLine = string(bytes.ToUpper(bytes.TrimSpace(c.line)))
	}
	c.line = c.line[:0]
	c.atLineStart = true
}

// ErrBareLineEnding is returned by Reader for data that breaks the line
// discipline.
var ErrBareLineEnding = errors.New("message data contains a bare CR, a bare LF or a NUL byte; only CRLF may end a line")

// Reader passes message data through, failing with ErrBareLineEnding at
// the first NUL, bare CR or bare LF.
type Reader struct {
	R         interface{ Read([]byte) (int, error) }
	pendingCR bool
	bad       bool
}

func (r *Reader) Read(p []byte) (int, error) {
	if r.bad {
		return 0, ErrBareLineEnding
	}
	n, err := r.R.Read(p)
	for i := 0; i < n; i++ {
		b := p[i]
		switch {
		case r.pendingCR && b != '\n', !r.pendingCR && b == '\n', b == 0:
			r.bad = true
			return i, ErrBareLineEnding
		}
		r.pendingCR = b == '\r'
	}
	if err != nil && r.pendingCR {
		// Data that ends in a CR: go-smtp's terminator is always CRLF, so
		// this can only be a CR the client sent bare.
		r.bad = true
		return n, ErrBareLineEnding
	}
	return n, err
}
