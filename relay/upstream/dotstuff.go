package upstream

import (
	"bufio"
	"bytes"
)

// dotWriter writes a message body as the content of DATA (RFC 5321,
// 4.5.2): a line that begins with a dot gets a second one, and Close ends
// the data with CRLF.CRLF. It gives what textproto's DotWriter gives for
// a body of CRLF lines (a spooled body never holds anything else), and
// like it turns a bare LF into CRLF; but it works on whole runs of bytes
// between line ends, written on with one call each, where textproto's
// writes every byte on its own — for a body of megabytes, to a server
// without CHUNKING, that was most of the delivery's CPU.
type dotWriter struct {
	w     *bufio.Writer
	state dotState
}

type dotState uint8

const (
	dotStart     dotState = iota // nothing written yet
	dotLineStart                 // just after a line end
	dotInLine                    // inside a line, the last byte not a CR
	dotAfterCR                   // inside a line, the last byte a CR
)

var crlf = []byte("\r\n")

// Write writes b, dot-stuffed.
func (d *dotWriter) Write(b []byte) (int, error) {
	for i := 0; i < len(b); {
		if d.state == dotStart || d.state == dotLineStart {
			if b[i] == '.' {
				if err := d.w.WriteByte('.'); err != nil {
					return i, err
				}
			}
			d.state = dotInLine
		}
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			// The line goes on in the next Write.
			if _, err := d.w.Write(b[i:]); err != nil {
				return i, err
			}
			if b[len(b)-1] == '\r' {
				d.state = dotAfterCR
			} else {
				d.state = dotInLine
			}
			return len(b), nil
		}
		lf := i + j
		var err error
		if lf > i && b[lf-1] == '\r' || lf == i && d.state == dotAfterCR {
			_, err = d.w.Write(b[i : lf+1])
		} else {
			// A bare LF: sent as CRLF, as textproto does.
			if _, err = d.w.Write(b[i:lf]); err == nil {
				_, err = d.w.Write(crlf)
			}
		}
		if err != nil {
			return i, err
		}
		d.state = dotLineStart
		i = lf + 1
	}
	return len(b), nil
}

// Close ends the data: a CRLF if the body did not end with one (an empty
// body gets one too, as with textproto), then ".\r\n". It does not flush.
func (d *dotWriter) Close() error {
	var err error
	switch d.state {
	case dotLineStart:
		_, err = d.w.WriteString(".\r\n")
	case dotAfterCR:
		_, err = d.w.WriteString("\n.\r\n")
	default:
		_, err = d.w.WriteString("\r\n.\r\n")
	}
	return err
}
