package upstream

import (
	"bufio"
	"fmt"
	"io"
	"sync"
)

// stagedReply is a reply together with the stage of the dialogue (for
// messages: "MAIL FROM", "RCPT TO", ...) whose command it answers.
type stagedReply struct {
	reply
	stage string
}

// exchange writes commands and reads their replies in order. Pipelined
// (RFC 2920), the commands are buffered and go out in one write when the
// replies are collected; otherwise each command waits for its reply.
type exchange struct {
	c         *Conn
	pipelined bool
	stages    []string // the commands written, by stage, in order
	replies   []stagedReply
	err       error  // the first I/O error; after it nothing more is sent
	failedAt  string // the stage whose reply the I/O error cost
	// refused is set when, not pipelining, MAIL was refused: the
	// commands after it are not sent.
	refused bool
}

// send writes one command line.
func (x *exchange) send(stage, line string) {
	if x.err != nil || x.refused {
		return
	}
	x.c.w.WriteString(line)
	x.c.w.WriteString("\r\n")
	x.stages = append(x.stages, stage)
	if !x.pipelined {
		x.collect()
		if x.err == nil && stage == "MAIL FROM" && !x.replies[len(x.replies)-1].ok() {
			x.refused = true
		}
	}
}

// sendBDAT writes the whole body as one chunk, BDAT LAST (RFC 3030):
// no dot-stuffing, no scanning, the size is known from the spool, and no
// reply to wait for between chunks. The body is read from the spool in
// reads of bodyRead bytes into a pooled buffer and written on as it is:
// after the commands have filled the first TLS record, the rest goes
// straight to TLS, in full records.
func (x *exchange) sendBDAT(b Body) {
	if x.err != nil || x.refused {
		return
	}
	fmt.Fprintf(x.c.w, "BDAT %d LAST\r\n", b.Size)
	x.stages = append(x.stages, "end of data")
	// A body of more than a record goes out in large writes: TLS's
	// records are gathered (cork) until the whole transaction is written.
	corked := b.Size > writeBuffer && x.c.cork != nil
	if corked {
		x.c.cork.cork()
	}
	n, err := copyBody(x.c.w, io.LimitReader(spoolReader{b.Open()}, b.Size), b.Size)
	if err == nil && n < b.Size {
		err = &badBody{fmt.Errorf("%d of %d bytes", n, b.Size)}
	}
	if corked {
		if err == nil {
			err = x.c.w.Flush()
		}
		if uerr := x.c.cork.uncork(); err == nil {
			err = uerr
		}
	}
	if err != nil {
		// The server now waits for bytes that will not come; the
		// connection is out of step and is dropped, which aborts the
		// transaction: nothing short is ever delivered.
		x.fail(err)
	}
}

// bodyRead is the size of the reads of a body from the spool.
const bodyRead = 256 << 10

var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, bodyRead); return &b }}

// copyBody copies src to w in reads of up to bodyRead bytes. A body that
// fits the write buffer is read straight into it when w is that buffer.
func copyBody(w io.Writer, src io.Reader, size int64) (int64, error) {
	if bw, ok := w.(*bufio.Writer); ok && size <= writeBuffer {
		return bw.ReadFrom(src)
	}
	buf := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(buf)
	var total int64
	for {
		n, err := io.ReadFull(src, *buf)
		if n > 0 {
			m, werr := w.Write((*buf)[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// sendDotted writes the body after DATA's 354, dot-stuffed, and the
// final dot.
func (x *exchange) sendDotted(b Body) {
	if x.err != nil {
		return
	}
	x.stages = append(x.stages, "end of data")
	dw := &dotWriter{w: x.c.w}
	n, err := copyBody(dw, io.LimitReader(spoolReader{b.Open()}, b.Size), b.Size)
	if err == nil && n < b.Size {
		err = &badBody{fmt.Errorf("%d of %d bytes", n, b.Size)}
	}
	if err != nil {
		// Never close the dot writer here: its final dot would deliver a
		// truncated message. Dropping the connection aborts it.
		x.fail(err)
		return
	}
	if err := dw.Close(); err != nil {
		x.fail(err)
	}
}

// collect flushes what was written and reads every reply still due.
func (x *exchange) collect() {
	if x.err != nil {
		return
	}
	if err := x.c.w.Flush(); err != nil {
		x.fail(err)
		return
	}
	for len(x.replies) < len(x.stages) {
		rep, err := x.c.readReply()
		if err != nil {
			x.fail(err)
			return
		}
		x.replies = append(x.replies, stagedReply{rep, x.stages[len(x.replies)]})
	}
}

// finish collects the outstanding replies and reports the first I/O
// error, if any.
func (x *exchange) finish() error {
	x.collect()
	return x.err
}

func (x *exchange) fail(err error) {
	x.err = err
	if len(x.replies) < len(x.stages) {
		x.failedAt = x.stages[len(x.replies)]
	} else {
		x.failedAt = "end of data"
	}
}

// closing returns the index of the first reply that is a 421 (the
// server closes the session), -1 when there is none.
func (x *exchange) closing() int {
	for i, r := range x.replies {
		if r.code == 421 {
			return i
		}
	}
	return -1
}

// failedStage names the stage whose reply the I/O error cost.
func (x *exchange) failedStage() string { return x.failedAt }

// lostBefore reports whether the I/O error came before any reply to the
// first command of stage: the server answered nothing of it.
func (x *exchange) lostBefore(stage string) bool {
	for i, s := range x.stages {
		if s == stage {
			return len(x.replies) <= i
		}
	}
	return true
}

// badBody is an error reading the message back from the spool, as
// opposed to an error of the connection.
type badBody struct{ err error }

func (e *badBody) Error() string { return "reading the spooled message: " + e.err.Error() }
func (e *badBody) Unwrap() error { return e.err }

// spoolReader marks the errors of the body's reader as badBody, so that
// io.Copy's single error says which side failed.
type spoolReader struct{ r io.Reader }

func (s spoolReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		err = &badBody{err}
	}
	return n, err
}
