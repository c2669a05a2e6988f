package config

import (
	"strings"
	"unicode"

	"tlsrelay/relay/address"
)

// TLSRPT is the [tlsrpt] table: sending the daily TLS-RPT reports (RFC
// 8460) to the rua of each policy domain. Off by default.
type TLSRPT struct {
	// Send turns sending on; off, the reports are only kept on disk.
	Send bool `toml:"send"`
	// OrganizationName and ContactInfo are the reports' organization-name
	// and contact-info; empty: the server's hostname and
	// postmaster@<hostname>.
	OrganizationName string `toml:"organization_name"`
	ContactInfo      string `toml:"contact_info"`
	// From is the author mailbox of report mail (mailto: rua); empty:
	// postmaster@<hostname>. Its domain should have a [[dkim]] key: RFC
	// 8460 §5.3 has receivers ignore unsigned reports.
	From string `toml:"from"`
	// MailFrom is the envelope sender of report mail; empty: the null
	// sender <>, so a report that cannot be delivered bounces to no one.
	MailFrom string `toml:"mail_from"`
}

// maxTLSRPTText bounds organization_name and contact_info.
const maxTLSRPTText = 256

// checkTLSRPT checks the [tlsrpt] table and fills in its defaults.
func (c *Config) checkTLSRPT(bad func(table, key, format string, args ...any) *Error, p *problems) {
	t := &c.TLSRPT
	h := c.Server.Hostname
	if t.OrganizationName == "" {
		t.OrganizationName = h
	}
	if t.ContactInfo == "" {
		t.ContactInfo = "postmaster@" + h
	}
	if t.From == "" && p.ok("server.hostname") {
		t.From = "postmaster@" + h
	}
	text := func(key, v string) {
		if len(v) > maxTLSRPTText || strings.IndexFunc(v, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) >= 0 {
			p.add(bad("tlsrpt", key, "must be printable text of at most %d bytes, on one line", maxTLSRPTText))
		}
	}
	text("organization_name", t.OrganizationName)
	text("contact_info", t.ContactInfo)
	if a, err := address.Parse(t.From, false); err != nil && t.From != "" {
		p.add(bad("tlsrpt", "from", "%q is not a mailbox: %v; write e.g. from = \"tlsrpt@example.com\" (a domain with a [[dkim]] key)", t.From, err))
	} else if err == nil {
		t.From = a.String()
	}
	if t.MailFrom != "" {
		if a, err := address.Parse(t.MailFrom, false); err != nil {
			p.add(bad("tlsrpt", "mail_from", "%q is not a mailbox: %v; write e.g. mail_from = \"tlsrpt-bounces@example.com\", or leave it out for the null sender <>", t.MailFrom, err))
		} else {
			t.MailFrom = a.String()
		}
	}
}
