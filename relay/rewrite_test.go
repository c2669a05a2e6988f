package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

// splitMessage returns a message's header section and body.
func splitMessage(t *testing.T, data []byte) (*mail.Message, string) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the upstream got something that is not a message: %v\n%s", err, data)
	}
	i := bytes.Index(data, []byte("\r\n\r\n"))
	return m, string(data[i+4:])
}

// TestHeaderFromRewrite: with envelope_from and header_from = "rewrite"
// the upstream gets MAIL FROM and a From header with the mailbox, the
// display name kept, a Reply-To with the original address (not when the
// message has one), the body unchanged, and the relay's DKIM signature
// verifies on what it received; the DSN of a failed recipient goes to the
// original sender (its From rewritten when its own route rewrites); a
// message whose From names two mailboxes is refused at DATA.
func TestHeaderFromRewrite(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyFile, txt := dkimKey(t, key, "rsa")
	lookup := func(name string) ([]string, error) {
		if name == "s1._domainkey.contoso.test" {
			return []string{txt}, nil
		}
		return nil, fmt.Errorf("no TXT for %s", name)
	}
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		Refuse: func(rcpt string) *smtp.SMTPError {
			if strings.HasPrefix(rcpt, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}})
	bounces := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate()})
	rwBounces := startSink(t, sink.Options{Cert: p.leaf(t, "mx.m365.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test", `envelope_from = "mailbox@contoso.test"`, `header_from = "rewrite"`)+
		destination("sender.test", bounces.Addr(), p.caFile, "mx.sender.test")+
		destination("m365.test", rwBounces.Addr(), p.caFile, "mx.m365.test", `envelope_from = "relay@m365.test"`, `header_from = "rewrite"`)+
		fmt.Sprintf("\n[[dkim]]\ndomain = \"contoso.test\"\nselector = \"s1\"\nprivate_key_file = %q\n", keyFile))

	const body = "Hello,\r\n.a line with a dot\r\nFrom: a body line is not a header\r\n\r\n"
	msgs := []struct{ header, wantName, wantReplyTo string }{
		{"From: \"Billing, App\" <app@sender.test>\r\n", "Billing, App", "<app@sender.test>"},
		{"From: =?utf-8?q?J=C3=B6rg?=\r\n <app@sender.test>\r\nReply-To: help@sender.test\r\n", "Jörg", "help@sender.test"},
	}
	for i, m := range msgs {
		data := m.header + fmt.Sprintf("To: rcpt@example.test\r\nSubject: rewrite %d\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <%d@test>\r\n\r\n", i, i) + body
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test", "nobody@example.test"}, data); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if !up.Wait(2, 10*time.Second) || !bounces.Wait(2, 10*time.Second) {
		t.Fatalf("upstream got %d of 2, the sender's domain %d DSNs of 2", up.Count(), bounces.Count())
	}
	for _, got := range up.Messages() {
		hdr, gotBody := splitMessage(t, got.Data)
		var i int
		fmt.Sscanf(hdr.Header.Get("Subject"), "rewrite %d", &i)
		want := msgs[i]
		from, err := hdr.Header.AddressList("From")
		if got.From != "mailbox@contoso.test" || err != nil || len(from) != 1 || from[0].Address != "mailbox@contoso.test" || from[0].Name != want.wantName {
			t.Errorf("message %d: MAIL FROM %q, From %v (%v); want the mailbox with the name %q", i, got.From, from, err, want.wantName)
		}
		if rt := hdr.Header["Reply-To"]; len(rt) != 1 || rt[0] != want.wantReplyTo {
			t.Errorf("message %d: Reply-To %q, want one: %q", i, rt, want.wantReplyTo)
		}
		if gotBody != body {
			t.Errorf("message %d: the body changed: %q", i, gotBody)
		}
		verifs, err := dkim.VerifyWithOptions(bytes.NewReader(got.Data), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "contoso.test" {
			t.Errorf("message %d: the relay's signature does not verify upstream: %v %+v\n%s", i, err, verifs, got.Data)
		}
	}
	for _, d := range bounces.Messages() {
		if d.From != "" || len(d.To) != 1 || d.To[0] != "app@sender.test" || !bytes.Contains(d.Data, []byte("nobody@example.test")) {
			t.Errorf("DSN from %q to %v, want from <> to the original sender, about nobody@example.test", d.From, d.To)
		}
	}

	// A DSN whose own route rewrites gets its From rewritten too.
	if _, err := submit(tr.Addr().String(), "app@m365.test", []string{"nobody@example.test"}, "From: app@m365.test\r\nSubject: x\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	if !rwBounces.Wait(1, 10*time.Second) {
		t.Fatal("no DSN to app@m365.test")
	}
	d := rwBounces.Messages()[0]
	hdr, _ := splitMessage(t, d.Data)
	if from, _ := hdr.Header.AddressList("From"); len(d.To) != 1 || d.To[0] != "app@m365.test" || len(from) != 1 || from[0].Address != "relay@m365.test" {
		t.Errorf("DSN through a rewriting destination: to %v, From %v", d.To, from)
	}
	if d.From != "" {
		t.Errorf("DSN through a rewriting destination went with MAIL FROM <%s>; a bounce keeps the null sender <> so it is never bounced", d.From)
	}

	_, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, "From: a@sender.test, b@sender.test\r\nSubject: two\r\n\r\nx\r\n")
	if smtpCode(err) != 554 || !strings.Contains(err.Error(), "names 2 mailboxes") {
		t.Errorf("a From with two mailboxes: %v, want 554 saying so", err)
	}
	if n := up.Count(); n != 2 {
		t.Errorf("the upstream got %d messages, want 2", n)
	}
}

// TestHeaderFromMixedTransaction: a transaction that holds a recipient of
// a rewriting destination takes no recipient of a destination that does
// not rewrite, or rewrites to another mailbox (452 4.5.3, as for reject
// mode), and the other way round; each goes in its own transaction.
func TestHeaderFromMixedTransaction(t *testing.T) {
	p := newPKI(t, "Test CA")
	rw := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	plain := startSink(t, sink.Options{Cert: p.leaf(t, "mx.other.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", rw.Addr(), p.caFile, "mx.example.test", `envelope_from = "mailbox@contoso.test"`, `header_from = "rewrite"`)+
		destination("same.test", rw.Addr(), p.caFile, "mx.example.test", `envelope_from = "mailbox@contoso.test"`, `header_from = "rewrite"`)+
		destination("elsewhere.test", rw.Addr(), p.caFile, "mx.example.test", `envelope_from = "other@contoso.test"`, `header_from = "rewrite"`)+
		destination("other.test", plain.Addr(), p.caFile, "mx.other.test"))
	for _, tc := range []struct {
		rcpts []string
		bad   string // the recipient that must get 452
	}{
		{[]string{"a@example.test", "b@same.test", "c@other.test"}, "c@other.test"},
		{[]string{"c@other.test", "a@example.test"}, "a@example.test"},
		{[]string{"a@example.test", "d@elsewhere.test"}, "d@elsewhere.test"},
	} {
		c, err := smtp.Dial(tr.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Hello("app.test")
		if err := c.Mail("app@sender.test", nil); err != nil {
			t.Fatal(err)
		}
		for _, rc := range tc.rcpts {
			err := c.Rcpt(rc, nil)
			if rc != tc.bad {
				if err != nil {
					t.Errorf("%v: %s refused: %v", tc.rcpts, rc, err)
				}
				continue
			}
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 5, 3}) || !strings.Contains(se.Message, "separate transaction") || !strings.Contains(se.Message, "header_from") {
				t.Errorf("%v: %s got %v, want 452 4.5.3 separate transaction, naming header_from", tc.rcpts, rc, err)
			}
		}
		c.Reset()
		c.Close()
	}
}

// TestHeaderFromReloadBetweenRcptAndData: when a reload makes a
// transaction's destination rewrite the From header after its RCPTs were
// accepted, DATA gets 451 4.7.0 (send it again) instead of a message
// spooled without the rewrite its destination now demands.
func TestHeaderFromReloadBetweenRcptAndData(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	base := baseConfig(t.TempDir())
	tr := startRelay(t, base+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	c, err := smtp.Dial(tr.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Hello("app.test")
	if err := c.Mail("app@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("rcpt@example.test", nil); err != nil {
		t.Fatal(err)
	}
	next, err := parseConfig(base + destination("example.test", up.Addr(), p.caFile, "mx.example.test",
		`envelope_from = "mailbox@contoso.test"`, `header_from = "rewrite"`))
	if err != nil {
		t.Fatal(err)
	}
	tr.Reload(next)
	w, err := c.Data()
	if err == nil {
		w.Write([]byte(testBody))
		err = w.Close()
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 451 || !strings.Contains(se.Message, "send the message again") {
		t.Fatalf("DATA after a reload that turned the rewrite on: %v, want 451 asking to send it again", err)
	}
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if m := up.Messages(); len(m) != 1 || !bytes.Contains(m[0].Data, []byte("From: <mailbox@contoso.test>")) {
		t.Errorf("the message sent again was not rewritten: %d messages\n%s", len(m), m[0].Data)
	}
}
