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
//
// For a plaintext DATA, Conn does more: it reads the message data itself,
// in one pass over whole buffers (see DataReader), and go-smtp sees only
// the end of data.
package linecheck

import (
	"bytes"
	"errors"
	"net"
	"sync/atomic"
)

// Conn applies the line discipline to everything read from a client
// connection, until the server starts TLS on it: then what follows is TLS,
// whose bytes it must not touch (the go-smtp server wraps this Conn in
// tls.Server). What the client sends never decides that: Conn watches the
// server's side too, and steps aside only when the client's last line was
// STARTTLS and the server answered it 220 — which go-smtp does only to the
// command, right before its handshake, never inside DATA or BDAT. If the
// handshake fails, go-smtp answers 550 in plaintext before it reads
// another line; Conn sees a write that is not a TLS record and applies the
// discipline again, so a session that goes on in plaintext is guarded as
// before. Only a TLS session that really started is left alone.
//
// Conn also serves the data of DATA (see DataReader). It hands go-smtp
// nothing beyond the end of a line that begins with DATA until go-smtp
// reads again, so when the server answers such a line 354 (which go-smtp
// does only to a DATA command), nothing of the data is in go-smtp's
// buffer: the data is Conn's to read, up to and including its end; go-smtp
// is then handed just the terminator ".\r\n" and goes on after it.
type Conn struct {
	net.Conn
	// MaxLineLength is the longest line, its CRLF included, that the data
	// of DATA may hold (see DataReader); set it to the go-smtp server's
	// MaxLineLength. NewConn sets go-smtp's default, 2000; 0 is no limit.
	MaxLineLength int
	// startTLS is set when the server offers STARTTLS.
	startTLS bool
	// aside is set while TLS runs on the connection (written by Write,
	// read by Read).
	aside atomic.Bool
	// saidSTARTTLS is set while the client's last complete line is
	// STARTTLS (written by Read, read by Write).
	saidSTARTTLS atomic.Bool
	// saidDATA is set while the client's last complete line begins with
	// DATA and nothing after it was handed on (written by Read, read by
	// Write); dataMode is set by the server's 354 to such a line, until
	// the end of data is handed to go-smtp.
	saidDATA atomic.Bool
	dataMode atomic.Bool

	// The read side, used by Read only.
	pendingCR bool
	line      []byte     // the start of the current line, to spot STARTTLS
	wasAside  bool       // the last Read was raw
	in        []byte     // where the socket is read into: small, or a data buffer in DATA
	small     []byte     // the small one, while in is a data buffer
	raw       []byte     // bytes read from the socket (in in) not yet transformed
	halt      bool       // the line just transformed began with DATA
	buf       []byte     // backing store of out, reused for every read
	out       []byte     // transformed bytes not yet returned
	err       error      // an error to return once raw and out are drained
	ik        intake     // the DATA in progress, when inData
	inData    bool       // the intake of a DATA started (in data mode)
	dr        DataReader // the reader of that DATA, handed to the session
	fullRead  bool       // the last read of the DATA in progress filled in
	// readErrData is a read error inside DATA: it stays.
	readErrData error

	// The server's side, used by Write only.
	greeted bool   // the server's first reply (its greeting) is out
	srvLine []byte // the start of the server's current line
}

// NewConn wraps c. startTLS says whether the server offers STARTTLS, so
// that only then can Conn step aside for TLS.
func NewConn(c net.Conn, startTLS bool) *Conn {
	return &Conn{Conn: c, startTLS: startTLS, MaxLineLength: 2000, in: make([]byte, smallBuffer), buf: make([]byte, 0, smallBuffer+1)}
}

// smallBuffer is the size of the reads outside DATA, and of the most Conn
// transforms at once.
const smallBuffer = 4096

// maxLineStart is how much of a line Conn remembers: enough for STARTTLS,
// and for a reply code.
const maxLineStart = 16

// TLS record content types (RFC 8446, 5.1; 24 is heartbeat): every write
// of a TLS connection starts with one, and no SMTP reply does.
const firstRecordType, lastRecordType = 20, 24

func (c *Conn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.dataMode.Load() && !c.inData {
			// The session reads go-smtp's data reader, not a DataReader:
			// the data passes here as any other bytes do.
			c.dataMode.Store(false)
		}
		if c.dataMode.Load() {
			if err := c.endData(); err != nil {
				return 0, err
			}
			continue
		}
		if len(c.raw) == 0 && c.err != nil {
			err := c.err
			c.err = nil
			return 0, err
		}
		if c.aside.Load() {
			c.wasAside = true
			// Bytes the client sent before the server's 220 are not
			// TLS's: dropped, as go-smtp drops what it had buffered.
			c.raw = nil
			if c.pendingCR && len(p) > 0 {
				// A CR held back just before TLS started is TLS's byte.
				c.pendingCR = false
				p[0] = '\r'
				return 1, nil
			}
			return c.Conn.Read(p)
		}
		if c.wasAside {
			// The handshake failed and the session goes on in plaintext:
			// start afresh, at the start of a line.
			c.wasAside = false
			c.line = c.line[:0]
			c.saidSTARTTLS.Store(false)
		}
		if len(c.raw) == 0 {
			c.releaseDataBuffer()
			n, err := c.Conn.Read(c.in)
			c.raw, c.err = c.in[:n], err
			if n == 0 && err != nil {
				c.err = nil
				if c.pendingCR {
					// The stream ended after a CR: it was bare.
					c.pendingCR = false
					c.out = append(c.buf[:0], 0)
					c.err = err
					continue
				}
				return 0, err
			}
		}
		var k int
		c.out, k = c.transform(c.buf[:0], c.raw[:min(len(c.raw), smallBuffer)])
		c.raw = c.raw[k:]
		if len(c.raw) == 0 && c.err != nil && c.pendingCR {
			// The stream ended after a CR: it was bare.
			c.pendingCR = false
			c.out = append(c.out, 0)
		}
		// With nothing out yet, only a CR arrived: its meaning depends on
		// the next byte, so read on.
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// transform appends to out the disciplined form of in, and returns it
// with how much of in it took: all of it, or up to the end of a line that
// begins with DATA.
func (c *Conn) transform(out, in []byte) ([]byte, int) {
	if c.saidDATA.Load() {
		c.saidDATA.Store(false)
	}
	for i := 0; i < len(in); i++ {
		// Fast path: copy the run up to the next CR or LF in one go.
		if !c.pendingCR {
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
		if c.pendingCR {
			c.pendingCR = false
			if b == '\n' {
				out = append(out, '\r', '\n')
				c.endLine()
				if c.halt {
					c.halt = false
					c.saidDATA.Store(true)
					return out, i + 1
				}
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
	return out, len(in)
}

func (c *Conn) note(b byte) {
	if len(c.line) < maxLineStart {
		c.line = append(c.line, b)
	}
}

func (c *Conn) endLine() {
	c.halt = len(c.line) >= 4 && bytes.EqualFold(c.line[:4], []byte("DATA"))
	if c.startTLS {
		said := len(c.line) < maxLineStart && bytes.EqualFold(bytes.TrimSpace(c.line), []byte("STARTTLS"))
		if said != c.saidSTARTTLS.Load() {
			c.saidSTARTTLS.Store(said)
		}
	}
	c.line = c.line[:0]
}

// Write passes the server's bytes on, watching for the start and the
// failure of TLS.
func (c *Conn) Write(p []byte) (int, error) {
	c.watch(p)
	return c.Conn.Write(p)
}

// watch follows the server's side: its replies while in plaintext, the
// first byte of each write while TLS runs.
func (c *Conn) watch(p []byte) {
	if c.aside.Load() {
		if len(p) == 0 || firstRecordType <= p[0] && p[0] <= lastRecordType {
			return // TLS (tls.Conn writes whole records)
		}
		// Plaintext: the handshake failed and the server went on.
		c.aside.Store(false)
		c.srvLine = c.srvLine[:0]
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		part := p
		if i >= 0 {
			part = p[:i]
		}
		if room := maxLineStart - len(c.srvLine); room > 0 {
			c.srvLine = append(c.srvLine, part[:min(len(part), room)]...)
		}
		if i < 0 {
			return
		}
		c.endServerLine()
		p = p[i+1:]
	}
}

// endServerLine judges a complete line of the server's.
func (c *Conn) endServerLine() {
	l := c.srvLine
	c.srvLine = c.srvLine[:0]
	if len(l) >= 4 && l[3] == '-' {
		return // more lines of this reply follow
	}
	if !c.greeted {
		c.greeted = true
		return
	}
	if bytes.HasPrefix(l, []byte("220")) && c.saidSTARTTLS.Load() {
		c.aside.Store(true) // go-smtp starts its TLS handshake now
	}
	if bytes.HasPrefix(l, []byte("354")) && c.saidDATA.Load() {
		c.dataMode.Store(true) // go-smtp reads the data now
	}
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
