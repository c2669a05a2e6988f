package sendmail

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/mail"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"tlsrelay/relay/drop"
)

// DataError is a message sendmail cannot send as given (EX_DATAERR): no
// recipient, an address field that cannot be read, too large.
type DataError struct{ Msg string }

func (e *DataError) Error() string { return e.Msg }

// Local is what sendmail knows about the machine and the caller.
type Local struct {
	// User is the invoking user's login name; Hostname the relay's
	// [server] hostname. The default sender is User@Hostname, and a
	// recipient without a domain gets "@Hostname".
	User     string
	Hostname string
	// MaxBytes is the relay's max_message_bytes: a larger message is
	// refused here, before it is read whole.
	MaxBytes int64
	Now      time.Time
}

// Message is a message ready for the relay: its envelope and its bytes,
// every line ending in CRLF.
type Message struct {
	Envelope drop.Envelope
	Data     []byte
}

// Prepare reads a message from a local program as sendmail does: lines
// ending in LF or CRLF (both become CRLF; a bare CR inside a line is left
// for the relay's line discipline to refuse), ended by the end of input or,
// without -i, by a line with a single dot. It adds Date:, Message-ID: and
// From: when missing, removes Bcc:, and finds the envelope.
func Prepare(o Options, in io.Reader, l Local) (*Message, error) {
	lines, err := readLines(in, !o.IgnoreDots, l.MaxBytes)
	if err != nil {
		return nil, err
	}
	header, body := splitHeader(lines)
	fields, err := parseHeader(header)
	if err != nil {
		return nil, err
	}
	from, err := envelopeSender(o, l)
	if err != nil {
		return nil, err
	}
	var rcpts []string
	for _, a := range o.Recipients {
		list, err := parseAddresses(a, l.Hostname)
		if err != nil {
			return nil, &DataError{Msg: fmt.Sprintf("recipient %q: %v", a, err)}
		}
		rcpts = append(rcpts, list...)
	}
	if o.ExtractRecipients {
		for _, name := range []string{"To", "Cc", "Bcc"} {
			for _, v := range fields[name] {
				list, err := parseAddresses(v, l.Hostname)
				if err != nil {
					return nil, &DataError{Msg: fmt.Sprintf("the %s: field cannot be read as addresses (%v): %q", name, err, v)}
				}
				rcpts = append(rcpts, list...)
			}
		}
	}
	rcpts = dedupe(rcpts)
	if len(rcpts) == 0 {
		if o.ExtractRecipients {
			return nil, &DataError{Msg: "no recipient: none given and none in the To:, Cc: or Bcc: fields (-t)"}
		}
		return nil, &DataError{Msg: "no recipient given (name one, or use -t to read them from the message)"}
	}

	var out bytes.Buffer
	out.Grow(len(header) + len(body) + 256)
	for _, f := range header {
		if !isField(f, "Bcc") {
			out.Write(f)
		}
	}
	if len(fields["From"]) == 0 {
		addr := from
		if addr == "" {
			addr = l.User + "@" + l.Hostname
		}
		fmt.Fprintf(&out, "From: %s\r\n", (&mail.Address{Name: o.FullName, Address: addr}).String())
	}
	if len(fields["Date"]) == 0 {
		fmt.Fprintf(&out, "Date: %s\r\n", l.Now.Format(time.RFC1123Z))
	}
	if len(fields["Message-Id"]) == 0 {
		var b [8]byte
		rand.Read(b[:])
		fmt.Fprintf(&out, "Message-ID: <%s.%s@%s>\r\n", strconv.FormatInt(l.Now.UnixNano(), 36), hex.EncodeToString(b[:]), l.Hostname)
	}
	out.WriteString("\r\n")
	out.Write(body)
	if l.MaxBytes > 0 && int64(out.Len()) > l.MaxBytes {
		return nil, &DataError{Msg: fmt.Sprintf("the message is larger than the relay's max_message_bytes (%d bytes)", l.MaxBytes)}
	}
	return &Message{Envelope: drop.Envelope{From: from, Recipients: rcpts, EightBit: o.EightBit}, Data: out.Bytes()}, nil
}

// readLines reads the input into CRLF lines (each element ends in CRLF).
func readLines(in io.Reader, dotEnds bool, maxBytes int64) ([][]byte, error) {
	limit := maxBytes
	if limit <= 0 {
		limit = 1 << 40
	}
	// Reading stops a little past the limit: the message is refused
	// anyway, and a converted LF adds a byte per line.
	r := bufio.NewReaderSize(io.LimitReader(in, limit+1), 64<<10)
	var lines [][]byte
	var total int64
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			content := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
			if dotEnds && string(content) == "." {
				return lines, nil
			}
			l := make([]byte, 0, len(content)+2)
			l = append(append(l, content...), '\r', '\n')
			lines = append(lines, l)
			total += int64(len(line))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if total > limit {
		return nil, &DataError{Msg: fmt.Sprintf("the message is larger than the relay's max_message_bytes (%d bytes)", maxBytes)}
	}
	return lines, nil
}

// splitHeader splits the lines into the header fields (each with its
// continuation lines) and the body. The header ends at the first empty
// line (which is dropped: the caller writes one), or at the first line
// that is neither a field nor a continuation, which starts the body. A
// leading mbox "From " line is dropped, as Postfix does.
func splitHeader(lines [][]byte) (fields [][]byte, body []byte) {
	i := 0
	if len(lines) > 0 && bytes.HasPrefix(lines[0], []byte("From ")) {
		i = 1
	}
	for ; i < len(lines); i++ {
		l := lines[i]
		if len(l) == 2 { // CRLF: the end of the header
			i++
			break
		}
		if (l[0] == ' ' || l[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] = append(fields[len(fields)-1], l...)
			continue
		}
		if !looksLikeField(l) {
			break
		}
		fields = append(fields, append([]byte(nil), l...))
	}
	for ; i < len(lines); i++ {
		body = append(body, lines[i]...)
	}
	return fields, body
}

// looksLikeField reports whether a line starts a header field: a name of
// printable ASCII other than ":" and space, then a colon.
func looksLikeField(l []byte) bool {
	colon := bytes.IndexByte(l, ':')
	if colon <= 0 {
		return false
	}
	for _, c := range l[:colon] {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

// isField reports whether a raw field has the given name.
func isField(f []byte, name string) bool {
	colon := bytes.IndexByte(f, ':')
	return colon > 0 && strings.EqualFold(string(f[:colon]), name)
}

// parseHeader reads the fields with net/mail: names canonical, folded
// values unfolded, every occurrence kept.
func parseHeader(fields [][]byte) (mail.Header, error) {
	var b bytes.Buffer
	for _, f := range fields {
		b.Write(f)
	}
	b.WriteString("\r\n")
	m, err := mail.ReadMessage(&b)
	if err != nil {
		return nil, &DataError{Msg: "the message header cannot be read: " + err.Error()}
	}
	h := mail.Header{}
	for k, v := range m.Header {
		h[textproto.CanonicalMIMEHeaderKey(k)] = v
	}
	return h, nil
}

// parseAddresses reads an address list (a command-line argument or a
// field's value) and returns the addresses; a bare local name gets
// "@hostname", as Postfix appends its origin.
func parseAddresses(v, hostname string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	list, err := mail.ParseAddressList(v)
	if err != nil {
		// A bare local name ("root") is no RFC 5322 address.
		name := strings.TrimSpace(v)
		if !strings.ContainsAny(name, " \t,<>@\"()[]:;\\") {
			return []string{name + "@" + hostname}, nil
		}
		return nil, err
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		out = append(out, a.Address)
	}
	return out, nil
}

// envelopeSender is -f/-r, else the invoking user at the host name.
func envelopeSender(o Options, l Local) (string, error) {
	if !o.SenderSet {
		return l.User + "@" + l.Hostname, nil
	}
	s := strings.TrimSpace(o.Sender)
	if s == "" || s == "<>" {
		return "", nil
	}
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = s[1 : len(s)-1]
	}
	if a, err := mail.ParseAddress(s); err == nil {
		return a.Address, nil
	}
	if !strings.Contains(s, "@") && !strings.ContainsAny(s, " \t<>") {
		return s + "@" + l.Hostname, nil
	}
	return "", &DataError{Msg: fmt.Sprintf("sender %q is not an address", o.Sender)}
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := in[:0]
	for _, a := range in {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
