package relay

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

func TestDeliversOverVerifiedTLS(t *testing.T) {
	for _, mode := range []string{"starttls", "implicit"} {
		t.Run(mode, func(t *testing.T) {
			p := newPKI(t, "Test CA")
			up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), Implicit: mode == "implicit"})
			tr := startRelay(t, baseConfig(t.TempDir())+
				destination("example.test", up.Addr(), p.caFile, "mx.example.test", `tls = "`+mode+`"`))

			reply, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
			if err != nil {
				t.Fatalf("submit: %v", err)
			}
			if !strings.Contains(reply, "queued as ") {
				t.Errorf("reply %q does not carry the queue id", reply)
			}
			if !up.Wait(1, 10*time.Second) {
				t.Fatal("upstream did not receive the message")
			}
			m := up.Messages()[0]
			if string(m.Data) != testBody {
				t.Errorf("body changed in transit:\n got %q\nwant %q", m.Data, testBody)
			}
			if m.From != "app@sender.test" || len(m.To) != 1 || m.To[0] != "rcpt@example.test" {
				t.Errorf("envelope changed: from %q to %v", m.From, m.To)
			}
			if !m.TLS.HandshakeComplete || m.TLS.Version < tls.VersionTLS12 {
				t.Errorf("upstream saw TLS %+v, want a completed handshake at TLS 1.2+", m.TLS.Version)
			}
			eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
			ids, _ := tr.store.List()
			if len(ids) != 0 {
				t.Errorf("spool still holds %v after delivery", ids)
			}
		})
	}
}

func TestRefusesUpstreamWhoseCAIsNotTrusted(t *testing.T) {
	trusted := newPKI(t, "Trusted CA")
	other := newPKI(t, "Other CA")
	up := startSink(t, sink.Options{Cert: other.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), trusted.caFile, "mx.example.test", `on_failure = "reject"`))

	_, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
	if smtpCode(err) != 554 || !strings.Contains(err.Error(), "unknown_authority") {
		t.Fatalf("got %v, want 554 naming unknown_authority", err)
	}
	if up.Count() != 0 {
		t.Fatalf("upstream received %d messages over unverified TLS", up.Count())
	}
	if !strings.Contains(tr.logs.String(), "tls_failure=unknown_authority") {
		t.Errorf("log has no tls_failure=unknown_authority line:\n%s", tr.logs.String())
	}
}

func TestQueuesWhileUpstreamIsDownThenDelivers(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", addr, p.caFile, "mx.example.test"))

	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	eventually(t, 5*time.Second, "a failed connect attempt", func() bool {
		return strings.Contains(tr.logs.String(), "failure=connect")
	})
	if tr.QueueSize() != 1 {
		t.Fatalf("queue size %d, want the message kept", tr.QueueSize())
	}
	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered after the upstream came up")
	}
	if got := string(up.Messages()[0].Data); got != testBody {
		t.Errorf("body %q", got)
	}
}

func TestRecoversQueueAfterRestart(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	spool := t.TempDir()
	cfg := baseConfig(spool) + destination("example.test", addr, p.caFile, "mx.example.test")

	first := startRelay(t, cfg)
	if _, err := submit(first.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	first.stop()

	// A half-written message from a crash mid-DATA must not be delivered.
	if err := os.WriteFile(filepath.Join(spool, "tmp", "1aaaaaaaaaa"), []byte("tlsrelay-spool 1\n{\"id\":"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Nor must a damaged committed one crash the start.
	if err := os.WriteFile(filepath.Join(spool, "msg", "1bbbbbbbbbb"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}

	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	second := startRelay(t, cfg)
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("queued message not delivered after restart")
	}
	time.Sleep(200 * time.Millisecond)
	if n := up.Count(); n != 1 {
		t.Errorf("upstream received %d messages, want exactly 1", n)
	}
	if _, err := os.Stat(filepath.Join(spool, "corrupt", "1bbbbbbbbbb")); err != nil {
		t.Errorf("damaged message not quarantined: %v", err)
	}
	if _, err := os.Stat(filepath.Join(spool, "tmp", "1aaaaaaaaaa")); !os.IsNotExist(err) {
		t.Errorf("half-written message not removed: %v", err)
	}
	_ = second
}

func TestBouncesAfterMaxAge(t *testing.T) {
	p := newPKI(t, "Test CA")
	senderMX := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate()})
	cfg := strings.Replace(baseConfig(t.TempDir()), `max_age = "1h"`, `max_age = "300ms"`, 1) +
		destination("example.test", freePort(t), p.caFile, "mx.example.test") +
		destination("sender.test", senderMX.Addr(), p.caFile, "mx.sender.test")
	tr := startRelay(t, cfg)

	reply, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
	if err != nil {
		t.Fatal(err)
	}
	if !senderMX.Wait(1, 10*time.Second) {
		t.Fatal("no DSN reached the sender")
	}
	dsn := senderMX.Messages()[0]
	if dsn.From != "" || dsn.To[0] != "app@sender.test" {
		t.Errorf("DSN envelope from %q to %v, want <> to the sender", dsn.From, dsn.To)
	}
	body := string(dsn.Data)
	id := reply[strings.LastIndex(reply, " ")+1:]
	for _, want := range []string{"multipart/report; report-type=delivery-status", "message/delivery-status",
		"Final-Recipient: rfc822; rcpt@example.test", "Action: failed", "Status: 5.4.7", "failure=connect",
		"X-Tlsrelay-Queue-ID: " + id, "Subject: test", "text/rfc822-headers"} {
		if !strings.Contains(body, want) {
			t.Errorf("DSN lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "line one") {
		t.Error("DSN quotes the original body; it must carry headers only")
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
}

func TestBouncesAtOnceOnUpstream5xx(t *testing.T) {
	p := newPKI(t, "Test CA")
	refuse := func(rcpt string) *smtp.SMTPError {
		if strings.HasPrefix(rcpt, "nobody@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), Refuse: refuse})
	senderMX := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test")+
		destination("sender.test", senderMX.Addr(), p.caFile, "mx.sender.test"))

	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"nobody@example.test", "rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(1, 10*time.Second) || !senderMX.Wait(1, 10*time.Second) {
		t.Fatal("expected delivery to the good recipient and a DSN for the bad one")
	}
	if got := up.Messages()[0].To; len(got) != 1 || got[0] != "rcpt@example.test" {
		t.Errorf("upstream got recipients %v", got)
	}
	body := string(senderMX.Messages()[0].Data)
	if !strings.Contains(body, "Final-Recipient: rfc822; nobody@example.test") || !strings.Contains(body, "no such user") {
		t.Errorf("DSN does not explain the 550:\n%s", body)
	}
	if strings.Contains(body, "Final-Recipient: rfc822; rcpt@example.test") {
		t.Error("DSN lists the recipient that was delivered")
	}
}

// TestBounceOfAnSMTPUTF8Message: the DSN about a message submitted with
// SMTPUTF8 uses RFC 6533's forms — message/global-delivery-status, the
// "utf-8" address type for a non-ASCII recipient, message/global-headers
// — and reaches a non-ASCII sender over SMTPUTF8.
func TestBounceOfAnSMTPUTF8Message(t *testing.T) {
	p := newPKI(t, "Test CA")
	refuse := func(rcpt string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), Refuse: refuse, SMTPUTF8: true})
	senderMX := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate(), SMTPUTF8: true})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test")+
		destination("sender.test", senderMX.Addr(), p.caFile, "mx.sender.test"))

	s := dialRaw(t, tr.Addr().String())
	s.cmd("EHLO app.test")
	if reply := sendRaw(t, s, "MAIL FROM:<ünï@sender.test> SMTPUTF8", map[string]string{"RCPT TO:<ëxample@example.test>": "250"}); !strings.HasPrefix(reply, "250") {
		t.Fatalf("end of data: %q", reply)
	}
	if !senderMX.Wait(1, 10*time.Second) {
		t.Fatal("no DSN reached the sender")
	}
	dsn := senderMX.Messages()[0]
	if dsn.From != "" || len(dsn.To) != 1 || dsn.To[0] != "ünï@sender.test" || !dsn.UTF8 {
		t.Errorf("DSN envelope from %q to %q, SMTPUTF8 %v; want <> to the sender, with SMTPUTF8", dsn.From, dsn.To, dsn.UTF8)
	}
	body := string(dsn.Data)
	for _, want := range []string{"Content-Type: message/global-delivery-status", "Final-Recipient: utf-8; ëxample@example.test",
		"Content-Type: message/global-headers", "no such user"} {
		if !strings.Contains(body, want) {
			t.Errorf("DSN lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "message/delivery-status") || strings.Contains(body, "rfc822; ëxample") {
		t.Errorf("DSN names a UTF-8 recipient in the ASCII-only forms:\n%s", body)
	}
}

func TestRejectModeAnswersHonestly(t *testing.T) {
	p := newPKI(t, "Test CA")
	good := startSink(t, sink.Options{Cert: p.leaf(t, "mx.good.test").TLSCertificate()})
	wrongName := startSink(t, sink.Options{Cert: p.leaf(t, "other.test").TLSCertificate()})
	cfg := baseConfig(t.TempDir()) +
		destination("good.test", good.Addr(), p.caFile, "mx.good.test", `on_failure = "reject"`) +
		destination("badcert.test", wrongName.Addr(), p.caFile, "mx.badcert.test", `on_failure = "reject"`) +
		destination("down.test", freePort(t), p.caFile, "mx.down.test", `on_failure = "reject"`) +
		destination("queued.test", freePort(t), p.caFile, "mx.queued.test")
	tr := startRelay(t, cfg)
	addr := tr.Addr().String()

	reply, err := submit(addr, "app@sender.test", []string{"a@good.test"}, testBody)
	if err != nil || !strings.Contains(reply, "delivered to good.test") {
		t.Fatalf("good upstream: reply %q, err %v", reply, err)
	}
	if good.Count() != 1 {
		t.Fatalf("good upstream has %d messages", good.Count())
	}

	_, err = submit(addr, "app@sender.test", []string{"a@badcert.test"}, testBody)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 5}) ||
		!strings.Contains(se.Message, "hostname_mismatch") || !strings.Contains(se.Message, "badcert.test") ||
		!strings.Contains(se.Message, "fix:") {
		t.Fatalf("bad certificate: got %v, want 554 5.7.5 naming destination, hostname_mismatch and a fix", err)
	}
	if wrongName.Count() != 0 {
		t.Fatal("message sent despite the hostname mismatch")
	}

	_, err = submit(addr, "app@sender.test", []string{"a@down.test"}, testBody)
	if smtpCode(err)/100 != 4 || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("upstream down: got %v, want 4xx naming the connect failure", err)
	}

	// One transaction, one honest answer: a reject-mode destination does
	// not share a transaction with another destination.
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("app@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("a@good.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@queued.test", nil); smtpCode(err) != 452 {
		t.Fatalf("mixing reject and queue destinations: got %v, want 452", err)
	}
	if err := c.Rcpt("c@good.test", nil); err != nil {
		t.Fatalf("second recipient of the same destination refused: %v", err)
	}
	if tr.QueueSize() != 0 {
		t.Errorf("reject mode queued %d messages", tr.QueueSize())
	}
}

func TestRefusesUnknownDomainsAndLimits(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	addr := tr.Addr().String()

	_, err := submit(addr, "app@sender.test", []string{"someone@elsewhere.test"}, testBody)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("unknown domain: got %v, want 550 5.7.1", err)
	}

	big := "Subject: big\r\n\r\n" + strings.Repeat("x", 100) + strings.Repeat("\r\n"+strings.Repeat("y", 998), 120)
	_, err = submit(addr, "app@sender.test", []string{"rcpt@example.test"}, big)
	if smtpCode(err) != 552 {
		t.Fatalf("oversized message: got %v, want 552", err)
	}

	many := []string{"1@example.test", "2@example.test", "3@example.test", "4@example.test", "5@example.test", "6@example.test"}
	_, err = submit(addr, "app@sender.test", many, testBody)
	if smtpCode(err) != 452 {
		t.Fatalf("too many recipients: got %v, want 452", err)
	}
	time.Sleep(100 * time.Millisecond)
	if up.Count() != 0 {
		t.Errorf("refused transactions reached the upstream: %d", up.Count())
	}
}

// TestAllowedAndDisallowedNetworks listens on both loopbacks and allows
// only IPv4's: a client on 127.0.0.1 reaches RCPT (and gets 550 for a
// domain no destination claims), one on ::1 is turned away at connect.
func TestAllowedAndDisallowedNetworks(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback on this machine (%v): cannot test a second network", err)
	} else {
		ln.Close()
	}
	p := newPKI(t, "Test CA")
	cfg := strings.Replace(baseConfig(t.TempDir()), "listen = \"127.0.0.1:0\"\nhostname = \"relay.test\"",
		"listen = \"[::]:0\"\nhostname = \"relay.test\"\nallowed_networks = [\"127.0.0.0/8\"]", 1) +
		destination("example.test", freePort(t), p.caFile, "mx.example.test")
	tr := startRelay(t, cfg)
	_, port, _ := net.SplitHostPort(tr.Addr().String())

	_, err := submit(net.JoinHostPort("127.0.0.1", port), "app@sender.test", []string{"someone@elsewhere.test"}, testBody)
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("allowed network, unclaimed domain: got %v, want 550 5.7.1", err)
	}
	_, err = submit(net.JoinHostPort("::1", port), "app@sender.test", []string{"rcpt@example.test"}, testBody)
	if smtpCode(err) != 554 || !strings.Contains(err.Error(), "allowed_networks") {
		t.Fatalf("disallowed network: got %v, want 554 naming allowed_networks", err)
	}
}

func TestAuthenticatesOnlyAfterVerifiedTLS(t *testing.T) {
	p := newPKI(t, "Test CA")
	t.Setenv("TLSRELAY_TEST_PASSWORD", "s3cret-pa55")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		Users: map[string]string{"relayuser": "s3cret-pa55"}})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test",
		`auth_username = "relayuser"`, `auth_password_env = "TLSRELAY_TEST_PASSWORD"`))
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if u := up.Messages()[0].User; u != "relayuser" {
		t.Errorf("upstream saw user %q", u)
	}
	if strings.Contains(tr.logs.String(), "s3cret-pa55") {
		t.Error("the password appears in the log")
	}
}

// TestReusesVerifiedConnections sends several messages one after another:
// they share one verified connection; a connection the upstream closed
// while idle is replaced without losing or failing a message.
func TestReusesVerifiedConnections(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), IdleTimeout: 300 * time.Millisecond})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	for i := 1; i <= 4; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatal(err)
		}
		if !up.Wait(i, 10*time.Second) {
			t.Fatalf("message %d not delivered", i)
		}
		// The connection goes back to the pool after the upstream's reply.
		eventually(t, 5*time.Second, "message done", func() bool { return tr.QueueSize() == 0 })
	}
	if n := up.Sessions(); n != 1 {
		t.Errorf("4 messages used %d connections, want 1", n)
	}
	time.Sleep(600 * time.Millisecond) // the upstream closes the idle connection
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(5, 10*time.Second) {
		t.Fatal("message after the upstream closed the idle connection not delivered")
	}
	if n := up.Sessions(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	if strings.Contains(tr.logs.String(), "delivery attempt failed") {
		t.Errorf("a stale pooled connection surfaced as a failure:\n%s", tr.logs.String())
	}
}

// TestNoGoroutinesLeftPerMessage sends a batch through the relay and
// checks that the goroutine count returns to where it was: nothing is
// left behind per message or per session.
func TestNoGoroutinesLeftPerMessage(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	send := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(5)
	if !up.Wait(5, 10*time.Second) {
		t.Fatal("not delivered")
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	send(50)
	if !up.Wait(55, 20*time.Second) {
		t.Fatal("not delivered")
	}
	eventually(t, 10*time.Second, "goroutines back to the baseline", func() bool {
		return runtime.NumGoroutine() <= base+2
	})
}
