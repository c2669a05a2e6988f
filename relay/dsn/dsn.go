// Package dsn writes delivery status notifications (RFC 3464): the bounce
// a sender gets when mail could not be delivered, and the "delayed"
// warning while it is still being retried. The human-readable part says
// in plain words what went wrong and how to fix it; the machine-readable
// part carries the failure class in Diagnostic-Code.
package dsn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
)

// Action is the RFC 3464 action of a report.
type Action string

// The two kinds of report tlsrelay sends.
const (
	Failed  Action = "failed"
	Delayed Action = "delayed"
)

// Recipient is what the report says about one recipient.
type Recipient struct {
	Addr        string
	Status      string // RFC 3463 code, e.g. "5.7.5"
	Destination string // the policy's name for it, e.g. "example.com"
	RemoteMTA   string // the upstream host, when one was involved
	Class       string // the failure class, e.g. "expired"
	Detail      string
	Fix         string
	LastAttempt time.Time
}

// Report is one delivery status notification about one message.
type Report struct {
	Action       Action
	ReportingMTA string // this relay's host name
	QueueID      string
	Sender       string // the envelope sender, who receives the report
	Arrival      time.Time
	RetryUntil   time.Time // for Delayed
	Recipients   []Recipient
	// Headers are the original message's header section.
	Headers []byte
	// UTF8 is set when the original message was submitted with SMTPUTF8:
	// its addresses and headers may be UTF-8.
	UTF8 bool
}

// International reports whether the report needs RFC 6533's forms: the
// original was an SMTPUTF8 message, or an address or a header it quotes
// is not ASCII. Such a report goes as message/global-delivery-status
// with message/global-headers, a non-ASCII recipient is named with the
// "utf-8" address type, and the report itself is sent with SMTPUTF8.
func (r *Report) International() bool {
	if r.UTF8 || !isASCII(r.Sender) || !isASCII(string(r.Headers)) {
		return true
	}
	for _, rc := range r.Recipients {
		if !isASCII(rc.Addr) {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// addressType is the Final-Recipient value for addr: "rfc822; addr", or
// for a non-ASCII address RFC 6533's "utf-8; addr", the utf-8-address
// form message/global-delivery-status allows.
func addressType(addr string) string {
	if isASCII(addr) {
		return "rfc822; " + addr
	}
	return "utf-8; " + addr
}

// Build returns the complete message, CRLF line endings throughout.
func (r *Report) Build(now time.Time) []byte {
	var b bytes.Buffer
	boundary := newBoundary()
	subject := "Undelivered Mail Returned to Sender"
	if r.Action == Delayed {
		subject = "Delayed Mail (still being retried)"
	}
	hdr := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	hdr("From", fmt.Sprintf("Mail Delivery System <MAILER-DAEMON@%s>", r.ReportingMTA))
	hdr("To", "<"+r.Sender+">")
	hdr("Subject", subject)
	hdr("Date", now.Format(time.RFC1123Z))
	hdr("Message-ID", fmt.Sprintf("<%s.%s.dsn@%s>", r.QueueID, strings.ToLower(string(r.Action)), r.ReportingMTA))
	hdr("Auto-Submitted", "auto-replied")
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", fmt.Sprintf("multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"", boundary))
	b.WriteString("\r\nThis is a MIME-encapsulated message.\r\n\r\n")

	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", boundary)
	writeLines(&b, r.humanText())

	statusType, headersType := "message/delivery-status", "text/rfc822-headers"
	if r.International() {
		statusType, headersType = "message/global-delivery-status", "message/global-headers"
	}
	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, statusType)
	hdr("Reporting-MTA", "dns; "+r.ReportingMTA)
	hdr("X-Tlsrelay-Queue-ID", r.QueueID)
	hdr("Arrival-Date", r.Arrival.Format(time.RFC1123Z))
	for _, rc := range r.Recipients {
		b.WriteString("\r\n")
		hdr("Final-Recipient", addressType(rc.Addr))
		hdr("Action", string(r.Action))
		hdr("Status", rc.Status)
		if rc.RemoteMTA != "" {
			hdr("Remote-MTA", "dns; "+hostOnly(rc.RemoteMTA))
		}
		hdr("Diagnostic-Code", fold("smtp; "+rc.diagnostic()))
		if !rc.LastAttempt.IsZero() {
			hdr("Last-Attempt-Date", rc.LastAttempt.Format(time.RFC1123Z))
		}
		if r.Action == Delayed && !r.RetryUntil.IsZero() {
			hdr("Will-Retry-Until", r.RetryUntil.Format(time.RFC1123Z))
		}
	}

	fmt.Fprintf(&b, "\r\n--%s\r\nContent-Type: %s\r\n\r\n", boundary, headersType)
	writeLines(&b, string(r.Headers))
	fmt.Fprintf(&b, "\r\n--%s--\r\n", boundary)
	return b.Bytes()
}

func (rc Recipient) diagnostic() string {
	label := "failure"
	if isTLSStatus(rc.Status) {
		label = "tls_failure"
	}
	return fmt.Sprintf("%s %s=%s; %s", rc.Status, label, rc.Class, oneLine(rc.Detail))
}

// isTLSStatus: tlsrelay reports TLS failures with X.7.5 or X.7.10.
func isTLSStatus(s string) bool {
	return strings.HasSuffix(s, ".7.5") || strings.HasSuffix(s, ".7.10")
}

func (r *Report) humanText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail relay at %s (tlsrelay).\n\n", r.ReportingMTA)
	if r.Action == Delayed {
		fmt.Fprintf(&b, "Your message (queue id %s, sent %s) has not been delivered yet\n", r.QueueID, r.Arrival.Format(time.RFC1123Z))
		fmt.Fprintf(&b, "to the recipients below. The relay keeps trying until %s;\n", r.RetryUntil.Format(time.RFC1123Z))
		b.WriteString("you do not need to send it again.\n")
	} else {
		fmt.Fprintf(&b, "Your message (queue id %s, sent %s) could not be delivered\n", r.QueueID, r.Arrival.Format(time.RFC1123Z))
		b.WriteString("to the recipients below and has been removed from the queue.\n")
	}
	b.WriteString("\nThe relay only sends mail over TLS it has verified; it never falls back to an\nunverified or unencrypted connection.\n")
	for _, rc := range r.Recipients {
		fmt.Fprintf(&b, "\n<%s>\n", rc.Addr)
		if rc.RemoteMTA != "" {
			fmt.Fprintf(&b, "    destination: %s via %s\n", rc.Destination, rc.RemoteMTA)
		}
		fmt.Fprintf(&b, "    problem:     %s\n", rc.Class)
		fmt.Fprintf(&b, "    what:        %s\n", oneLine(rc.Detail))
		if rc.Fix != "" {
			fmt.Fprintf(&b, "    how to fix:  %s\n", oneLine(rc.Fix))
		}
	}
	b.WriteString("\nThe original message's headers follow. Forward this report to the\nadministrator of the mail relay if you cannot fix the problem yourself.\n")
	return b.String()
}

// writeLines writes s with every line ending made CRLF.
func writeLines(b *bytes.Buffer, s string) {
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		b.WriteString(strings.TrimRight(sc.Text(), "\r"))
		b.WriteString("\r\n")
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// fold wraps a header value at spaces so no line exceeds 78 characters.
func fold(v string) string {
	var out strings.Builder
	lineLen := 20 // room for the field name
	for i, w := range strings.Fields(v) {
		if i > 0 {
			if lineLen+1+len(w) > 76 {
				out.WriteString("\r\n\t")
				lineLen = 1
			} else {
				out.WriteByte(' ')
				lineLen++
			}
		}
		out.WriteString(w)
		lineLen += len(w)
	}
	return out.String()
}

func hostOnly(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i > 0 && !strings.HasSuffix(hostport, "]") {
		return strings.Trim(hostport[:i], "[]")
	}
	return hostport
}

func newBoundary() string {
	var r [12]byte
	rand.Read(r[:])
	return "tlsrelay-" + hex.EncodeToString(r[:])
}

// maxHeaderBytes bounds the original headers quoted in a report.
const maxHeaderBytes = 32 << 10

// ReadHeaders returns the header section of a message (up to the first
// empty line), at most 32 KiB of it.
func ReadHeaders(r io.Reader) []byte {
	br := bufio.NewReader(io.LimitReader(r, maxHeaderBytes))
	var out []byte
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return out
		}
		out = append(out, line...)
		if err != nil {
			return out
		}
	}
}
