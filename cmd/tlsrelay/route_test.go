package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// routeConfig: every domain goes to a primary and a backup provider,
// except mail from the billing application and the alerts domain, which
// go to their own mailboxes at another provider.
const routeConfig = `
[queue]
dir = "SPOOL"

[[destination]]
domains = ["*"]
upstream = ["smtp1.example.net:587", "smtp2.example.net:587"]

[[destination]]
domains = ["*"]
senders = ["billing@example.com"]
upstream = "smtp.office365.com:587"
max_connections = 3
envelope_from = "billing@contoso.com"
header_from = "rewrite"

[[destination]]
domains = ["*"]
senders = ["*@alerts.example.com", ".example.org"]
upstream = "smtp.office365.com:587"

[[destination]]
domains = ["partner.test"]
senders = ["*@example.com"]
upstream = "mx.partner.test:25"
`

func writeRouteConfig(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "tlsrelay.toml")
	src = strings.ReplaceAll(src, "SPOOL", filepath.Join(dir, "spool"))
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func runRoute(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"route"}, args...)...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// TestRouteExplainsPrecedence: `tlsrelay route` names, per recipient,
// the destination chosen, the patterns that matched and those
// considered, the hops, limits, rewriting and TLS policy.
func TestRouteExplainsPrecedence(t *testing.T) {
	cfg := writeRouteConfig(t, routeConfig)
	for _, tc := range []struct {
		sender, rcpt string
		want         []string
	}{
		{"billing@example.com", "someone@example.net", []string{
			`someone@example.net from <billing@example.com>: destination #2 * from billing@example.com`,
			`matched:     sender pattern "billing@example.com" and recipient pattern "*"`,
			`#1 * by "*": not chosen: a destination whose senders match wins over one without senders`,
			`#3 * from *@alerts.example.com by "*": not a candidate: none of its senders matches`,
			`1. smtp.office365.com:587 (require_hostname=smtp.office365.com server_name=smtp.office365.com)`,
			`limits:      max_connections=3 max_messages_per_minute=none`,
			`rewrite:     envelope_from=billing@contoso.com header_from=rewrite (at acceptance, before DKIM signing: the From address becomes billing@contoso.com`,
			`tls:         tls=starttls min_tls=1.2 trust=system roots pins=none`}},
		{"<>", "someone@example.net", []string{
			`someone@example.net from <>: destination #1 *`,
			`not a candidate: the null sender <> matches no senders pattern`,
			`1. smtp1.example.net:587 (require_hostname=smtp1.example.net server_name=smtp1.example.net)`,
			`2. smtp2.example.net:587 (require_hostname=smtp2.example.net server_name=smtp2.example.net)`,
			`rewrite:     none`}},
		{"app@mail.example.org", "x@example.net", []string{`destination #3`, `sender pattern ".example.org"`}},
		// A destination whose senders match wins over the more specific
		// recipient pattern of one whose senders do not.
		{"ops@example.com", "a@partner.test", []string{`destination #4 partner.test from *@example.com`, `recipient pattern "partner.test"`}},
		{"billing@example.com", "a@partner.test", []string{`destination #4`,
			`#2 * from billing@example.com by "*" from "billing@example.com": not chosen: "*" is a less specific recipient pattern than "partner.test"`}},
	} {
		out, code := runRoute(t, "-config", cfg, tc.sender, tc.rcpt)
		if code != 0 {
			t.Errorf("%s → %s: exit %d\n%s", tc.sender, tc.rcpt, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s → %s: output lacks %q:\n%s", tc.sender, tc.rcpt, w, out)
			}
		}
	}

	out, code := runRoute(t, "-config", cfg, "-json", "billing@example.com", "a@example.net", "b@partner.test")
	if code != 0 {
		t.Fatalf("json: exit %d\n%s", code, out)
	}
	var rep struct {
		Sender     string
		Recipients []struct {
			Recipient, Destination string
			Routed                 bool
			Index                  int    `json:"destination_index"`
			SenderPattern          string `json:"sender_pattern"`
			Hops                   []struct{ Upstream string }
			Limits                 struct{ MaxConnections int }
			EnvelopeFrom           string `json:"envelope_from"`
			HeaderFrom             string `json:"header_from"`
			Considered             []struct{ Verdict string }
			TLS                    struct{ Mode, MinTLS string }
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if len(rep.Recipients) != 2 || rep.Sender != "billing@example.com" {
		t.Fatalf("json: %+v", rep)
	}
	r := rep.Recipients[0]
	if !r.Routed || r.Index != 2 || r.SenderPattern != "billing@example.com" || len(r.Hops) != 1 || r.Limits.MaxConnections != 3 ||
		r.EnvelopeFrom != "billing@contoso.com" || r.HeaderFrom != "rewrite" || r.TLS.Mode != "starttls" || len(r.Considered) != 3 {
		t.Errorf("json recipient: %+v", r)
	}
	if rep.Recipients[1].Index != 4 {
		t.Errorf("json second recipient: %+v", rep.Recipients[1])
	}
}

// TestRouteExitCodes: 1 when a recipient is refused (and why), 2 for a
// wrong command line or a configuration that does not load — such as
// two destinations that could claim one (sender, recipient) alike.
func TestRouteExitCodes(t *testing.T) {
	cfg := writeRouteConfig(t, `
[queue]
dir = "SPOOL"

[[destination]]
domains = ["example.net"]
senders = ["*@example.com"]
upstream = "smtp.example.net:587"
`)
	out, code := runRoute(t, "-config", cfg, "app@example.com", "a@example.net", "b@example.org")
	if code != 1 || !strings.Contains(out, "b@example.org from <app@example.com>: REFUSED: no [[destination]] claims example.org") {
		t.Errorf("exit %d, want 1 with the reason:\n%s", code, out)
	}
	out, code = runRoute(t, "-config", cfg, "app@other.test", "a@example.net")
	if code != 1 || !strings.Contains(out, "are for other senders") || !strings.Contains(out, "none of its senders matches") {
		t.Errorf("exit %d, want 1 naming the sender mismatch:\n%s", code, out)
	}
	if out, code = runRoute(t, "-config", cfg, "app@example.com"); code != 2 {
		t.Errorf("no recipient: exit %d, want 2\n%s", code, out)
	}
	amb := writeRouteConfig(t, `
[queue]
dir = "SPOOL"

[[destination]]
domains = ["example.net"]
senders = ["app-*@example.com"]
upstream = "smtp1.example.net:587"

[[destination]]
domains = ["example.net"]
senders = ["*-app@example.com"]
upstream = "smtp2.example.net:587"
`)
	out, code = runRoute(t, "-config", amb, "app-app@example.com", "a@example.net")
	if code != 2 || !strings.Contains(out, "destination[2].senders") || !strings.Contains(out, "destination #1") || !strings.Contains(out, "destination #2") {
		t.Errorf("ambiguous configuration: exit %d, want 2 naming both:\n%s", code, out)
	}
}
