package relay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

// TestSenderRoutes: the same recipient domain goes to two upstreams,
// logging in with two different credentials, depending on the envelope
// sender; a sender no destination of that domain is for is refused at
// RCPT; bounces (<>) route by recipient alone.
func TestSenderRoutes(t *testing.T) {
	p := newPKI(t, "Test CA")
	billing := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), Users: map[string]string{"billing@app.test": "pw-billing"}})
	alerts := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), Users: map[string]string{"alerts@app.test": "pw-alerts"}})
	dir := t.TempDir()
	pw := func(name, v string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	cfg := baseConfig(t.TempDir()) +
		destination("example.test", billing.Addr(), p.caFile, "mx.example.test", `senders = ["billing@app.test"]`,
			`auth_username = "billing@app.test"`, `auth_password_file = "`+pw("b", "pw-billing")+`"`) +
		destination("example.test", alerts.Addr(), p.caFile, "mx.example.test", `senders = ["*@alerts.app.test", ".ops.app.test"]`,
			`auth_username = "alerts@app.test"`, `auth_password_file = "`+pw("a", "pw-alerts")+`"`)
	tr := startRelay(t, cfg)
	for _, from := range []string{"billing@app.test", "disk@alerts.app.test", "cron@db.ops.app.test"} {
		if _, err := submit(tr.Addr().String(), from, []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("%s: %v", from, err)
		}
	}
	if !billing.Wait(1, 10*time.Second) || !alerts.Wait(2, 10*time.Second) {
		t.Fatalf("billing got %d, alerts %d; want 1 and 2", billing.Count(), alerts.Count())
	}
	if m := billing.Messages()[0]; m.User != "billing@app.test" || m.From != "billing@app.test" {
		t.Errorf("billing upstream: user %q from %q", m.User, m.From)
	}
	for _, m := range alerts.Messages() {
		if m.User != "alerts@app.test" || m.From == "billing@app.test" {
			t.Errorf("alerts upstream: user %q from %q", m.User, m.From)
		}
	}
	_, err := submit(tr.Addr().String(), "other@app.test", []string{"rcpt@example.test"}, testBody)
	if smtpCode(err) != 550 || !strings.Contains(err.Error(), "for other senders") {
		t.Errorf("a sender no destination is for: %v, want 550 saying so", err)
	}
	_, err = submit(tr.Addr().String(), "", []string{"rcpt@example.test"}, testBody)
	if smtpCode(err) != 550 {
		t.Errorf("the null sender matches no senders: %v, want 550", err)
	}
}

// TestEnvelopeFromRewrite: envelope_from replaces MAIL FROM upstream; the
// body (and so a DKIM signature over it) is untouched, and the DSN of a
// failed recipient goes to the original sender.
func TestEnvelopeFromRewrite(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		Refuse: func(rcpt string) *smtp.SMTPError {
			if strings.HasPrefix(rcpt, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}})
	bounces := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test", `envelope_from = "mailbox@contoso.test"`)+
		destination("sender.test", bounces.Addr(), p.caFile, "mx.sender.test"))
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test", "nobody@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(1, 10*time.Second) || !bounces.Wait(1, 10*time.Second) {
		t.Fatalf("upstream got %d, the sender's domain %d", up.Count(), bounces.Count())
	}
	if m := up.Messages()[0]; m.From != "mailbox@contoso.test" || string(m.Data) != testBody {
		t.Errorf("upstream saw MAIL FROM %q and body changed=%v", m.From, string(m.Data) != testBody)
	}
	if d := bounces.Messages()[0]; d.From != "" || len(d.To) != 1 || d.To[0] != "app@sender.test" {
		t.Errorf("DSN from %q to %v, want from <> to the original sender", d.From, d.To)
	}
}
