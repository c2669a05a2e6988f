package linecheck

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/emersion/go-smtp"
)

// The DATA intake: one pass over whole buffers of the raw client stream
// that finds the end of data, removes the stuffed dots, enforces the line
// discipline and the line length limit, and counts the size. It replaces,
// for a plaintext DATA, go-smtp's data reader (one ReadByte per byte), the
// raw-stream rewrite and the data check — and gives exactly their verdict:
//
//   - only CRLF ends a line, and only CRLF.CRLF (at the start of the data
//     or after a CRLF) ends the data; a bare CR, a bare LF or a NUL anywhere
//     refuses the message with ErrBareLineEnding, and the intake reads on,
//     by the same rule, to the real end, so that the session stays in step
//     and nothing after a hidden end of data is ever read as a command;
//   - the first dot of a line that starts with one is removed;
//   - a line longer than the limit (its CRLF included) fails with
//     smtp.ErrTooLongLine, as go-smtp's own limit does, and the session
//     ends (go-smtp answers 500 5.4.0 and closes);
//   - data beyond the size limit is refused with ErrTooLarge, read on to
//     its end as well.

// ErrTooLarge is returned by a DataReader for data beyond its size limit.
var ErrTooLarge = errors.New("message data larger than the size limit")

// intake states, at a position of the stream.
const (
	atLineStart = iota // after a CRLF (or at the start of the data)
	atDot              // after a line-initial dot (removed), nothing else of the line yet
	atDotCR            // after ".\r" at the start of a line: with LF, the end of data
	inLine             // inside a line, the last byte not a CR
	afterCR            // inside a line, the last byte a CR (kept in the output)
)

// intake is the DATA parser's state between buffers.
type intake struct {
	state   int
	lineLen int   // bytes of the current line so far, its LF not counted
	maxLine int   // longest line with its CRLF; 0: no limit
	size    int64 // data bytes produced
	maxSize int64 // 0: no limit
	// err is the first verdict against the data: ErrBareLineEnding or
	// ErrTooLarge (the intake reads on to the end of data), or
	// smtp.ErrTooLongLine (fatal: the intake stops).
	err   error
	ended bool // the end of data was read
}

func (x *intake) refuse(err error) {
	if x.err == nil {
		x.err = err
	}
}

// fatal reports whether the intake must read no further.
func (x *intake) fatal() bool { return x.err == smtp.ErrTooLongLine }

// long counts n more bytes of the current line and reports whether the
// line is now too long. The count mirrors go-smtp's line limit: the LF
// ending the previous line counts towards this one, so a line of more
// than maxLine bytes with its CRLF fails.
func (x *intake) long(n int) bool {
	x.lineLen += n
	if x.maxLine > 0 && x.lineLen >= x.maxLine {
		x.err = smtp.ErrTooLongLine
		return true
	}
	return false
}

// scan parses b, rewriting it in place: b[:n] is the data it held. end is
// the index just past the terminating CRLF.CRLF when b holds it (what
// follows belongs to the next command), else -1. Once the intake has
// refused the data, b's contents are discarded by the caller.
func (x *intake) scan(b []byte) (n, end int) {
	n, end = x.parse(b)
	if x.err == nil && bytes.IndexByte(b[:n], 0) >= 0 {
		x.refuse(ErrBareLineEnding) // a NUL (what follows the data is not checked here)
	}
	return n, end
}

// parse is scan without the check for NUL.
func (x *intake) parse(b []byte) (n, end int) {
	w, i := 0, 0
	emit := func(seg []byte) {
		if w != i {
			copy(b[w:], seg)
		}
		w += len(seg)
	}
	for i < len(b) {
		if x.fatal() {
			return w, -1
		}
		switch x.state {
		case atLineStart:
			if b[i] == '.' {
				x.state = atDot
				i++
				x.long(1)
				continue
			}
			x.state = inLine
		case atDot:
			if b[i] == '\r' {
				x.state = atDotCR
				i++
				x.long(1)
				continue
			}
			x.state = inLine // the dot is dropped; the rest is data
		case atDotCR:
			if b[i] == '\n' {
				x.ended = true
				x.count(w)
				return w, i + 1
			}
			x.refuse(ErrBareLineEnding) // ".\r" without LF
			x.state = inLine
		case afterCR:
			if b[i] == '\n' {
				emit(b[i : i+1])
				i++
				x.state, x.lineLen = atLineStart, 0
				continue
			}
			x.refuse(ErrBareLineEnding) // the CR before was bare
			x.state = inLine
		case inLine:
			j := bytes.IndexByte(b[i:], '\n')
			e := len(b)
			if j >= 0 {
				e = i + j
			}
			seg := b[i:e]
			if k := bytes.IndexByte(seg, '\r'); k >= 0 && k != len(seg)-1 {
				x.refuse(ErrBareLineEnding) // a CR inside the line
			}
			cr := len(seg) > 0 && seg[len(seg)-1] == '\r'
			if x.long(len(seg)) {
				return w, -1
			}
			emit(seg)
			i = e
			switch {
			case j < 0: // the line goes on in the next buffer
				if cr {
					x.state = afterCR
				}
			case cr: // CRLF: the line ends
				emit(b[i : i+1])
				i++
				x.state, x.lineLen = atLineStart, 0
			default: // a bare LF, which ends nothing
				x.refuse(ErrBareLineEnding)
				emit(b[i : i+1])
				i++
				if x.long(1) {
					return w, -1
				}
			}
		}
	}
	x.count(w)
	return w, -1
}

// count adds n produced bytes to the size.
func (x *intake) count(n int) {
	x.size += int64(n)
	if x.maxSize > 0 && x.size > x.maxSize {
		x.refuse(ErrTooLarge)
	}
}

// dataBufferSize is the size of the intake's reads from the socket, once
// a read has filled the small buffer (a small message never needs more).
const dataBufferSize = 64 << 10

// dataBuffers holds the intake's read buffers: only a session in DATA
// has one.
var dataBuffers = sync.Pool{New: func() any { b := make([]byte, dataBufferSize); return &b }}

// DataReader is the message data of a DATA command in progress on a
// Conn, as go-smtp's data reader would give it (dots unstuffed, CRLF
// kept, the terminator removed), with the line discipline applied: it
// fails with ErrBareLineEnding, ErrTooLarge, smtp.ErrTooLongLine or the
// connection's read error (io.ErrUnexpectedEOF for an end of stream before
// the end of data). Get it from Conn.DataReader inside the session's Data;
// whatever it leaves unread is read to the end of data and discarded when
// go-smtp goes on. A session that reads go-smtp's reader instead (or
// nothing) gets the data as before: Conn steps back to its raw-stream
// discipline, and go-smtp finds the end.
type DataReader struct {
	c   *Conn
	out []byte // produced data not yet returned by Read
}

// WriteTo writes the message data to w, one whole buffer per Write.
func (d *DataReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(d.out) > 0 {
		n, err := w.Write(d.out)
		total += int64(n)
		d.out = nil
		if err != nil {
			return total, err
		}
	}
	for {
		b, err := d.c.intakeNext()
		if len(b) > 0 {
			n, werr := w.Write(b)
			total += int64(n)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Read reads message data.
func (d *DataReader) Read(p []byte) (int, error) {
	for len(d.out) == 0 {
		b, err := d.c.intakeNext()
		d.out = b
		if len(b) == 0 && err != nil {
			return 0, err
		}
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

// DataReader returns the reader of the data of the DATA command in
// progress — the server has answered it 354 — with data beyond maxSize
// bytes (0: no limit) refused with ErrTooLarge. It returns nil when Conn
// does not serve this data (no DATA in progress, or inside TLS): then read
// go-smtp's reader. Use it only inside the session's Data.
func (c *Conn) DataReader(maxSize int64) *DataReader {
	if !c.dataMode.Load() {
		return nil
	}
	x := c.startIntake()
	if x.size > 0 || x.ended || x.err != nil {
		return nil // already read by someone else
	}
	x.maxSize = maxSize
	c.dr = DataReader{c: c}
	return &c.dr
}

// startIntake returns the intake of the DATA in progress, starting it
// at the first use.
func (c *Conn) startIntake() *intake {
	if !c.inData {
		c.ik, c.inData = intake{maxLine: c.MaxLineLength}, true
	}
	return &c.ik
}

// intakeNext returns the data of the next buffer, io.EOF at the end of
// data, or the verdict against the data (or the read error) once there
// is one.
func (c *Conn) intakeNext() ([]byte, error) {
	x := c.startIntake()
	for {
		switch {
		case x.err != nil:
			return nil, x.err
		case x.ended:
			return nil, io.EOF
		}
		b, err := c.intakeStep()
		if err != nil {
			return nil, err
		}
		if x.err == nil && len(b) > 0 {
			return b, nil
		}
	}
}

// intakeStep parses the next buffer: what is left of the last read, or
// a new read from the socket into a data buffer. What follows the end of
// data stays in raw, for the commands after it. It returns a read error
// (io.ErrUnexpectedEOF for an end of stream), which stays.
func (c *Conn) intakeStep() ([]byte, error) {
	if c.readErrData != nil {
		return nil, c.readErrData
	}
	b := c.raw
	c.raw = nil
	if len(b) == 0 {
		if c.err != nil {
			// The read that brought the DATA line also failed.
			c.readErrData, c.err = c.err, nil
		} else {
			if c.fullRead {
				// The data comes faster than the small buffer takes it:
				// read it in large buffers from here on.
				c.useDataBuffer()
			}
			n, err := c.Conn.Read(c.in)
			c.fullRead = n == len(c.in)
			b = c.in[:n]
			if n == 0 && err != nil {
				c.readErrData = err
			} else if err != nil {
				c.err = err // after these bytes
			}
		}
		if c.readErrData == io.EOF {
			c.readErrData = io.ErrUnexpectedEOF
		}
		if c.readErrData != nil {
			return nil, c.readErrData
		}
	}
	n, end := c.ik.scan(b)
	if end >= 0 {
		c.raw = b[end:]
	}
	return b[:n], nil
}

// endData reads the DATA in progress to its end, discarding what the
// session left unread, and hands go-smtp the terminator: go-smtp's data
// reader ends there, and its next command is read from just after the
// data. A fatal verdict (a line too long) or a read error is returned
// instead, at every call.
func (c *Conn) endData() error {
	x := c.startIntake()
	for !x.ended && !x.fatal() {
		if _, err := c.intakeStep(); err != nil {
			return err
		}
	}
	if x.fatal() {
		return x.err
	}
	c.inData = false
	c.fullRead = false
	c.out = append(c.buf[:0], ".\r\n"...)
	c.line = c.line[:0]
	c.saidSTARTTLS.Store(false)
	c.dataMode.Store(false)
	return nil
}

// useDataBuffer reads the socket into a large buffer from here on.
func (c *Conn) useDataBuffer() {
	if c.small == nil {
		c.small = c.in
		c.in = *dataBuffers.Get().(*[]byte)
	}
}

// releaseDataBuffer goes back to the small buffer once nothing is left
// in the large one.
func (c *Conn) releaseDataBuffer() {
	if c.small != nil && len(c.raw) == 0 {
		b := c.in
		c.in, c.small = c.small, nil
		dataBuffers.Put(&b)
	}
}
