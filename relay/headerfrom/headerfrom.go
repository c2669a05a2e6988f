// Package headerfrom rewrites a message's From header field for an
// upstream that accepts mail only from the mailbox it authenticated
// (header_from = "rewrite"): the From address becomes that mailbox, the
// display name is kept as written, and a Reply-To with the original
// address is added when the message has none. Nothing after the header
// section is touched.
//
// The rewrite streams: a Writer sits between what the client sends and
// the spool, keeps in memory only the line being read and the From field,
// and passes every other byte through unchanged.
package headerfrom

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// Bounds of what is held in memory: one header line (a longer one that
// is not part of From passes through in pieces), and the From field with
// its continuation lines.
const (
	maxLine = 8 << 10
	maxFrom = 16 << 10
)

// Error says why a message's From header cannot be rewritten; the
// message must then not be relayed to the rewriting destination.
type Error struct {
	Why string // e.g. "its From header names 2 mailboxes"
}

func (e *Error) Error() string { return "the From header cannot be rewritten: " + e.Why }

func refuse(format string, args ...any) *Error { return &Error{Why: fmt.Sprintf(format, args...)} }

// Result is what a Writer did, once closed.
type Result struct {
	// Original is the From address the message had ("" when it was not
	// rewritten because it already was the mailbox).
	Original string
	// Rewritten is set when the From field was changed; ReplyTo when a
	// Reply-To field was added.
	Rewritten, ReplyTo bool
}

// Writer rewrites the From header of the message written to it and
// writes the result to its destination. Input must use CRLF line endings
// (the front door enforces that); the end of the header section is the
// first empty line. Close must be called after the last byte: it writes
// what is still held and reports a message whose From cannot be
// rewritten. After such an error the Writer discards what it is given, so
// the caller may go on reading the client's data to its end.
type Writer struct {
	dst     io.Writer
	mailbox string

	body    bool   // past the header section: pass everything through
	line    []byte // the header line being read (at most maxLine)
	long    bool   // passing the rest of a long line through
	field   []byte // the From field being collected, with its line endings
	inFrom  bool
	froms   int
	replyTo bool // the message has a Reply-To field
	lineNo  int
	err     error // sticky: the first error, reported by Close
	res     Result
}

// NewWriter returns a Writer that replaces the From address with mailbox
// (local@domain, as envelope_from gives it) and writes to dst.
func NewWriter(dst io.Writer, mailbox string) *Writer {
	return &Writer{dst: dst, mailbox: mailbox}
}

// Write takes the next bytes of the message.
func (w *Writer) Write(b []byte) (int, error) {
	n := len(b)
	if _, ok := w.err.(*Error); ok {
		return n, nil // refused: read on to the end, keep nothing
	}
	if w.err != nil {
		return 0, w.err
	}
	for len(b) > 0 && w.err == nil {
		if w.body {
			if _, err := w.dst.Write(b); err != nil {
				w.err = err
				return 0, err
			}
			return n, nil
		}
		i := bytes.IndexByte(b, '\n')
		if w.long {
			end := len(b)
			if i >= 0 {
				end = i + 1
				w.long = false
			}
			w.emit(b[:end])
			b = b[end:]
			continue
		}
		if i < 0 {
			if len(w.line)+len(b) <= maxLine {
				w.line = append(w.line, b...)
				return n, nil
			}
			take := maxLine + 1 - len(w.line)
			w.line = append(w.line, b[:take]...)
			b = b[take:]
			w.longLine()
			continue
		}
		if len(w.line)+i+1 > maxLine {
			take := maxLine + 1 - len(w.line)
			w.line = append(w.line, b[:take]...)
			b = b[take:]
			w.longLine()
			continue
		}
		w.line = append(w.line, b[:i+1]...)
		b = b[i+1:]
		w.headerLine(w.line)
		w.line = w.line[:0]
	}
	if _, ok := w.err.(*Error); ok {
		return n, nil
	}
	if w.err != nil {
		return 0, w.err
	}
	return n, nil
}

// emit writes header bytes through.
func (w *Writer) emit(b []byte) {
	if w.err == nil {
		_, w.err = w.dst.Write(b)
	}
}

// longLine handles a header line longer than maxLine, of which w.line
// holds the beginning: one that is part of From is refused; any other
// passes through.
func (w *Writer) longLine() {
	w.lineNo++
	if isContinuation(w.line) {
		if w.inFrom {
			w.err = refuse("its From header is longer than %d bytes", maxFrom)
			return
		}
	} else {
		if !w.newField(w.line) {
			return
		}
		if w.inFrom {
			w.err = refuse("its From header is longer than %d bytes", maxFrom)
			return
		}
	}
	w.emit(w.line)
	w.line = w.line[:0]
	w.long = true
}

// headerLine handles one complete header line (with its CRLF).
func (w *Writer) headerLine(line []byte) {
	w.lineNo++
	switch {
	case len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "":
		w.endOfHeader()
		if w.err == nil {
			w.emit(line)
			w.body = true
		}
	case isContinuation(line):
		if w.inFrom {
			if len(w.field)+len(line) > maxFrom {
				w.err = refuse("its From header is longer than %d bytes", maxFrom)
				return
			}
			w.field = append(w.field, line...)
			return
		}
		if w.lineNo == 1 {
			w.err = refuse("its header section begins with a continuation line")
			return
		}
		w.emit(line)
	default:
		if !w.newField(line) {
			return
		}
		if w.inFrom {
			w.field = append(w.field[:0], line...)
			return
		}
		w.emit(line)
	}
}

// newField starts a header field: it finishes a From field collected
// before it and notes what this one is. It reports false on an error.
func (w *Writer) newField(line []byte) bool {
	if w.inFrom {
		w.finishFrom()
		if w.err != nil {
			return false
		}
	}
	name, ok := fieldName(line)
	if !ok {
		w.err = refuse("line %d of its header section is not a header field (no \"Name:\")", w.lineNo)
		return false
	}
	switch {
	case strings.EqualFold(name, "From"):
		w.froms++
		if w.froms > 1 {
			w.err = refuse("it has %d From header fields; a message has one", w.froms)
			return false
		}
		w.inFrom = true
	case strings.EqualFold(name, "Reply-To"):
		w.replyTo = true
	}
	return true
}

// endOfHeader finishes the header section: the From field, and the
// Reply-To that goes with a rewritten one.
func (w *Writer) endOfHeader() {
	if w.inFrom {
		w.finishFrom()
	}
	if w.err != nil {
		return
	}
	if w.froms == 0 {
		w.err = refuse("it has no From header field")
		return
	}
	if w.res.Rewritten && !w.replyTo {
		w.emit([]byte("Reply-To: " + (&mail.Address{Address: w.res.Original}).String() + "\r\n"))
		w.res.ReplyTo = true
	}
}

// Close ends the message: a header section without an empty line (a
// message with no body) is finished here. It returns an *Error when the
// From header could not be rewritten, or the destination's error.
func (w *Writer) Close() (Result, error) {
	if w.err != nil {
		return w.res, w.err
	}
	if !w.body {
		if w.long {
			w.emit([]byte("\r\n"))
			w.long = false
		} else if len(w.line) > 0 {
			line := append(w.line, "\r\n"...)
			w.line = nil
			w.headerLine(line)
		}
		if !w.body {
			w.endOfHeader()
		}
	}
	return w.res, w.err
}

// finishFrom rewrites the collected From field and writes it.
func (w *Writer) finishFrom() {
	w.inFrom = false
	out, orig, err := Rewrite(w.field, w.mailbox)
	if err != nil {
		w.err = err
		return
	}
	if orig != "" {
		w.res.Original, w.res.Rewritten = orig, true
	}
	w.emit(out)
}

// Rewrite returns the From header field (name, value and line endings,
// folded as received) with its one address replaced by mailbox, and the
// original address. When the address is already mailbox the field comes
// back unchanged and orig is "". The display name, comments and folding
// are kept byte for byte (RFC 2047 encoded words included, whatever their
// charset); a field without a display name gets mailbox in angle
// brackets, with a name written as an old-style comment
// ("joe@example.com (Joe)") turned into a quoted or encoded display name.
// A field that does not parse, names no mailbox or several, or is a group
// is an *Error.
func Rewrite(field []byte, mailbox string) (out []byte, orig string, err error) {
	colon := bytes.IndexByte(field, ':')
	if colon < 0 {
		return nil, "", refuse("its From header has no value")
	}
	value := string(field[colon+1:])
	list, perr := parseList(value)
	switch {
	case perr != nil:
		return nil, "", refuse("its From header does not parse as an address (%v)", perr)
	case len(list) == 0:
		return nil, "", refuse("its From header names no mailbox")
	case len(list) > 1:
		return nil, "", refuse("its From header names %d mailboxes; header_from = \"rewrite\" needs exactly one", len(list))
	}
	a := list[0]
	if strings.EqualFold(a.Address, mailbox) {
		return field, "", nil
	}
	addr := (&mail.Address{Address: mailbox}).String() // "<local@domain>", quoted as needed
	lt, gt, group := angle(value)
	var nv string
	switch {
	case group:
		return nil, "", refuse("its From header is a group (\"name: …;\"), not a mailbox")
	case lt >= 0:
		nv = value[:lt] + addr + value[gt+1:]
	default:
		nv = " " + (&mail.Address{Name: a.Name, Address: mailbox}).String() + lineEnding(value)
	}
	// What goes upstream must say exactly what was meant: the same
	// display name, the new address, one mailbox.
	check, cerr := parseList(nv)
	if cerr != nil || len(check) != 1 || !strings.EqualFold(check[0].Address, mailbox) || check[0].Name != a.Name {
		return nil, "", refuse("its From header could not be rewritten safely")
	}
	return append(append([]byte(nil), field[:colon+1]...), nv...), a.Address, nil
}

// lineEnding returns the CRLF that ends a field value, if it has one.
func lineEnding(v string) string {
	if strings.HasSuffix(v, "\r\n") {
		return "\r\n"
	}
	return ""
}

// parseList parses an address list as net/mail does, after unfolding.
// Encoded words of any charset are accepted without being converted
// (the display name is kept as written, so its charset does not matter).
func parseList(v string) ([]*mail.Address, error) {
	v = strings.NewReplacer("\r\n ", " ", "\r\n\t", "\t").Replace(v)
	v = strings.TrimSuffix(v, "\r\n")
	p := mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: func(_ string, in io.Reader) (io.Reader, error) {
		return in, nil
	}}}
	return p.ParseList(v)
}

// angle finds the angle-addr of a name-addr: the positions of its '<' and
// '>' outside quoted strings and comments (-1 when there is none), and
// whether a ':' outside them makes the value a group.
func angle(v string) (lt, gt int, group bool) {
	lt, gt = -1, -1
	depth, quoted, literal := 0, false, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quoted:
			if c == '\\' {
				i++
			} else if c == '"' {
				quoted = false
			}
		case depth > 0:
			switch c {
			case '\\':
				i++
			case '(':
				depth++
			case ')':
				depth--
			}
		case literal:
			if c == '\\' {
				i++
			} else if c == ']' {
				literal = false
			}
		case c == '"':
			quoted = true
		case c == '(':
			depth = 1
		case c == '[':
			literal = true
		case c == '<' && lt < 0:
			lt = i
		case c == '>' && lt >= 0 && gt < 0:
			gt = i
		case c == ':' && lt < 0:
			group = true
		}
	}
	if gt < 0 {
		lt = -1
	}
	return lt, gt, group
}

// isContinuation reports whether a header line continues the field
// before it (begins with a space or a tab).
func isContinuation(line []byte) bool { return len(line) > 0 && (line[0] == ' ' || line[0] == '\t') }

// fieldName returns the name of the field a header line begins: printable
// ASCII but ':' before a ':' (RFC 5322 section 3.6.8; a space before the
// colon, obsolete syntax, is allowed and dropped).
func fieldName(line []byte) (string, bool) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return "", false
	}
	name := strings.TrimRight(string(line[:colon]), " \t")
	if name == "" {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 33 || name[i] > 126 {
			return "", false
		}
	}
	return name, true
}
