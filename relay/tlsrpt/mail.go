package tlsrpt

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"strings"
	"time"
)

// Mail is a report message for a mailto: rua (RFC 8460 §5.3).
type Mail struct {
	// From is the author mailbox (the report submitter's), To the rua's.
	From, To string
	// PolicyDomain is the domain the report is about.
	PolicyDomain string
	Report       *Report
	// Gz is the gzip'ed JSON report.
	Gz []byte
}

// submitter is the domain of the From mailbox.
func (m *Mail) submitter() string { return m.From[strings.LastIndexByte(m.From, '@')+1:] }

// Filename is the attachment's name, as RFC 8460 §5.3 writes it:
// submitter!policy-domain!begin!end.json.gz (Unix seconds).
func (m *Mail) Filename() string {
	return fmt.Sprintf("%s!%s!%d!%d.json.gz", m.submitter(), m.PolicyDomain,
		m.Report.DateRange.Start.Unix(), m.Report.DateRange.End.Unix())
}

// Build writes the message, CRLF line ends: multipart/report;
// report-type="tlsrpt" with a short text/plain part and the report as an
// application/tlsrpt+gzip attachment in base64; the Subject and the
// TLS-Report-Domain and TLS-Report-Submitter fields RFC 8460 §5.3
// requires. The message says TLS-Required: No (RFC 8689): a report must
// reach a domain whose TLS is broken (RFC 8460 §3); the relay still sends
// it only over TLS its policy verifies.
func (m *Mail) Build(now time.Time) []byte {
	var b bytes.Buffer
	mp := multipart.NewWriter(&b)
	h := func(name, value string) { fmt.Fprintf(&b, "%s: %s\r\n", name, value) }
	r := m.Report
	var id [12]byte
	rand.Read(id[:])
	h("From", "<"+m.From+">")
	h("To", "<"+m.To+">")
	h("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", m.PolicyDomain, m.submitter(), r.ReportID))
	h("Date", now.Format(time.RFC1123Z))
	h("Message-ID", "<tlsrpt."+hex.EncodeToString(id[:])+"@"+m.submitter()+">")
	h("TLS-Report-Domain", m.PolicyDomain)
	h("TLS-Report-Submitter", m.submitter())
	h("TLS-Required", "No")
	h("Auto-Submitted", "auto-generated")
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type="tlsrpt"; boundary="`+mp.Boundary()+`"`)
	b.WriteString("\r\n")

	// The organization's name may be UTF-8: quoted-printable keeps the
	// part 7-bit whatever it holds.
	part, _ := mp.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}, "Content-Transfer-Encoding": {"quoted-printable"}})
	text := quotedprintable.NewWriter(part)
	fmt.Fprintf(text, "This is an aggregate TLS report (RFC 8460) from %s: the sessions it had\r\n"+
		"delivering mail to %s, successful and failed, from %s to %s UTC.\r\n"+
		"You receive it because the TLS-RPT record of the domain (_smtp._tls TXT)\r\n"+
		"names this address in rua.\r\n\r\nPolicy Domain: %s\r\nSubmitter: %s\r\nReport-ID: %s\r\n",
		r.OrganizationName, m.PolicyDomain, r.DateRange.Start.Format(time.DateTime), r.DateRange.End.Format(time.DateTime),
		m.PolicyDomain, m.submitter(), r.ReportID)
	text.Close()

	name := m.Filename()
	att, _ := mp.CreatePart(textproto.MIMEHeader{
		"Content-Type":              {mime.FormatMediaType(ContentType, map[string]string{"name": name})},
		"Content-Disposition":       {mime.FormatMediaType("attachment", map[string]string{"filename": name})},
		"Content-Transfer-Encoding": {"base64"},
	})
	enc := base64.StdEncoding.EncodeToString(m.Gz)
	for len(enc) > 76 {
		att.Write([]byte(enc[:76] + "\r\n"))
		enc = enc[76:]
	}
	att.Write([]byte(enc + "\r\n"))
	mp.Close()
	return b.Bytes()
}
