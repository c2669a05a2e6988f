package relay

import (
	"strings"
	"testing"
	"time"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
)

// TestDelayedDSNExplainsTheTLSFailure keeps a message queued behind an
// upstream with an expired certificate and checks the sender's "delayed"
// notice: one only, in plain words, with the class in Diagnostic-Code.
func TestDelayedDSNExplainsTheTLSFailure(t *testing.T) {
	p := newPKI(t, "Test CA")
	expired, err := p.ca.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"},
		NotBefore: time.Now().Add(-90 * 24 * time.Hour), NotAfter: time.Now().Add(-5 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	up := startSink(t, sink.Options{Cert: expired.TLSCertificate()})
	senderMX := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate()})
	cfg := strings.Replace(baseConfig(t.TempDir()), `max_age = "1h"`, "max_age = \"1h\"\ndelay_warning = \"300ms\"", 1) +
		destination("example.test", up.Addr(), p.caFile, "mx.example.test") +
		destination("sender.test", senderMX.Addr(), p.caFile, "mx.sender.test")
	tr := startRelay(t, cfg)

	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !senderMX.Wait(1, 10*time.Second) {
		t.Fatal("no delayed DSN")
	}
	time.Sleep(500 * time.Millisecond) // several more retries: still one notice
	if n := senderMX.Count(); n != 1 {
		t.Errorf("%d notices, want exactly 1", n)
	}
	body := string(senderMX.Messages()[0].Data)
	for _, want := range []string{"Action: delayed", "Status: 4.7.5", "tls_failure=expired", "Will-Retry-Until:",
		"you do not need to send it again", "renew the certificate on mx.example.test", "Subject: Delayed Mail"} {
		if !strings.Contains(body, want) {
			t.Errorf("delayed DSN lacks %q:\n%s", want, body)
		}
	}
	if up.Count() != 0 {
		t.Error("message delivered over an expired certificate")
	}
	if tr.QueueSize() != 1 {
		t.Errorf("queue size %d, want the message still queued", tr.QueueSize())
	}
}

// TestWarnsOnceBeforeUpstreamCertificateExpires delivers twice through an
// upstream whose certificate expires in ten days: one warning, naming the
// host and the date.
func TestWarnsOnceBeforeUpstreamCertificateExpires(t *testing.T) {
	p := newPKI(t, "Test CA")
	soon, err := p.ca.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"},
		NotAfter: time.Now().Add(10 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	up := startSink(t, sink.Options{Cert: soon.TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	for i := 0; i < 2; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatal(err)
		}
		if !up.Wait(i+1, 10*time.Second) {
			t.Fatal("not delivered")
		}
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
	logs := tr.logs.String()
	if n := strings.Count(logs, "upstream certificate expires soon"); n != 1 {
		t.Fatalf("%d expiry warnings, want 1:\n%s", n, logs)
	}
	date := soon.Cert.NotAfter.UTC().Format("2006-01-02")
	if !strings.Contains(logs, date) || !strings.Contains(logs, "mx.example.test") {
		t.Errorf("warning does not name host and date %s:\n%s", date, logs)
	}
}
