package config

import (
	"bytes"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// TestTLSRPTTable: sending is off by default, with defaults from the
// hostname; set keys are checked, with their line, and `config check`
// shows them.
func TestTLSRPTTable(t *testing.T) {
	base := "[server]\nhostname = \"relay.example.test\"\n[queue]\ndir = \"/tmp/x\"\n[[destination]]\ndomains = [\"*\"]\nupstream = \"mx\"\n"
	c, err := Parse("t.toml", base)
	if err != nil {
		t.Fatal(err)
	}
	want := TLSRPT{OrganizationName: "relay.example.test", ContactInfo: "postmaster@relay.example.test", From: "postmaster@relay.example.test"}
	if c.TLSRPT != want {
		t.Errorf("defaults: %+v", c.TLSRPT)
	}
	c, err = Parse("t.toml", base+"[tlsrpt]\nsend = true\norganization_name = \"Example Org\"\ncontact_info = \"https://example.test/tls\"\nfrom = \"TLSRPT@Example.Test\"\nmail_from = \"bounces@example.test\"\n")
	if err != nil {
		t.Fatal(err)
	}
	want = TLSRPT{Send: true, OrganizationName: "Example Org", ContactInfo: "https://example.test/tls", From: "TLSRPT@example.test", MailFrom: "bounces@example.test"}
	if c.TLSRPT != want {
		t.Errorf("set: %+v", c.TLSRPT)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c.Effective()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "[tlsrpt]\n  send = true\n  organization_name = \"Example Org\"") {
		t.Errorf("config check does not show [tlsrpt]:\n%s", buf.String())
	}
	for _, c := range []struct{ src, want string }{
		{"[tlsrpt]\nsend = \"yes\"\n", "t.toml:9: tlsrpt.send"},
		{"[tlsrpt]\nsend = true\nfrom = \"postmaster\"\n", "t.toml:10: tlsrpt.from: \"postmaster\" is not a mailbox"},
		{"[tlsrpt]\nmail_from = \"a@@b\"\n", "t.toml:9: tlsrpt.mail_from"},
		{"[tlsrpt]\norganization_name = \"a\\nb\"\n", "t.toml:9: tlsrpt.organization_name: must be printable"},
		{"[tlsrpt]\ncontact_info = \"" + strings.Repeat("x", 300) + "\"\n", "tlsrpt.contact_info"},
		{"[tlsrpt]\nsend_reports = true\n", "t.toml:9: tlsrpt.send_reports: unknown key"},
	} {
		_, err := Parse("t.toml", base+c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s→ %v, want %q", c.src, err, c.want)
		}
	}
}
