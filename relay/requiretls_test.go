package relay

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
)

// TestREQUIRETLS: the front door offers REQUIRETLS only inside TLS and
// refuses it on a plaintext session; a REQUIRETLS message goes through
// the queue with its flag, upstream with REQUIRETLS to a hop that offers
// it, and never to one that does not (requiretls, 5.7.30).
func TestREQUIRETLS(t *testing.T) {
	p := newPKI(t, "Test CA")
	offers := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), REQUIRETLS: true})
	lacks := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	dir := t.TempDir()
	inbound := p.leaf(t, "relay.test")
	certFile, keyFile := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	certgen.WriteCertFile(certFile, inbound.Cert)
	keyPEM, _ := certgen.KeyPEM(inbound.Key)
	os.WriteFile(keyFile, keyPEM, 0o600)
	server := fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q\n", certFile, keyFile)
	cfg := strings.Replace(baseConfig(t.TempDir()), `hostname = "relay.test"`, `hostname = "relay.test"`+"\n"+server, 1) +
		destination("offers.test", offers.Addr(), p.caFile, "mx.example.test") +
		destination("lacks.test", lacks.Addr(), p.caFile, "mx.example.test", `on_failure = "reject"`) +
		destination("queued-lacks.test", lacks.Addr(), p.caFile, "mx.example.test")
	tr := startRelay(t, cfg)
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)

	dial := func(startTLS bool) *smtp.Client {
		t.Helper()
		var c *smtp.Client
		var err error
		if startTLS {
			c, err = smtp.DialStartTLS(tr.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "relay.test"})
		} else {
			c, err = smtp.Dial(tr.Addr().String())
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Hello("app.test"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	send := func(c *smtp.Client, to string) error {
		if err := c.Mail("app@sender.test", &smtp.MailOptions{RequireTLS: true}); err != nil {
			return err
		}
		if err := c.Rcpt(to, nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		w.Write([]byte(testBody))
		return w.Close()
	}

	plain := dial(false)
	if ok, _ := plain.Extension("REQUIRETLS"); ok {
		t.Error("REQUIRETLS offered on a plaintext session")
	}
	// go-smtp's client will not send a parameter that was not offered;
	// a client may, so say it by hand.
	raw, err := net.Dial("tcp", tr.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tp := textproto.NewConn(raw)
	tp.ReadResponse(220)
	tp.PrintfLine("EHLO app.test")
	tp.ReadResponse(250)
	tp.PrintfLine("MAIL FROM:<app@sender.test> REQUIRETLS")
	if code, msg, err := tp.ReadResponse(250); code != 530 || !strings.HasPrefix(msg, "5.7.10") {
		t.Errorf("REQUIRETLS on a plaintext session: %d %s %v, want 530 5.7.10", code, msg, err)
	}

	c := dial(true)
	if ok, _ := c.Extension("REQUIRETLS"); !ok {
		t.Fatal("REQUIRETLS not offered inside TLS")
	}
	if err := send(c, "a@offers.test"); err != nil {
		t.Fatalf("REQUIRETLS inside TLS: %v", err)
	}
	if !offers.Wait(1, 5*time.Second) || !offers.Messages()[0].RequireTLS {
		t.Fatalf("the upstream offering REQUIRETLS did not get the message with REQUIRETLS: %d messages", offers.Count())
	}

	err = send(c, "a@lacks.test")
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 30}) ||
		!strings.Contains(se.Message, "failure=requiretls") {
		t.Errorf("REQUIRETLS to an upstream without it: %v, want 554 5.7.30 naming requiretls", err)
	}
	if err := send(c, "a@queued-lacks.test"); err != nil {
		t.Fatalf("queue mode: %v", err)
	}
	eventually(t, 5*time.Second, "a requiretls deferral in the log", func() bool {
		return strings.Contains(tr.logs.String(), "failure=requiretls")
	})
	if lacks.Count() != 0 {
		t.Errorf("the upstream without REQUIRETLS got %d messages", lacks.Count())
	}
	// Without REQUIRETLS the same upstream is fine.
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"b@lacks.test"}, testBody); err != nil || lacks.Count() != 1 {
		t.Errorf("without REQUIRETLS: %v, %d messages", err, lacks.Count())
	}
}
