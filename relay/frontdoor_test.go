package relay

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
	"tlsrelay/relay/users"
)

// frontDoor is a relay with inbound TLS and a users file.
type frontDoor struct {
	relay *testRelay
	up    *sink.Sink
	roots *x509.CertPool
}

func startFrontDoor(t *testing.T, serverExtra string) *frontDoor {
	t.Helper()
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	dir := t.TempDir()
	inbound := p.leaf(t, "relay.test")
	certFile, keyFile := filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key")
	certgen.WriteCertFile(certFile, inbound.Cert)
	keyPEM, _ := certgen.KeyPEM(inbound.Key)
	os.WriteFile(keyFile, keyPEM, 0o600)
	alice, err := users.HashLine("alice", "alice-password", []string{"*@sender.test"})
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := users.HashLine("bob", "bob-password", nil)
	usersFile := filepath.Join(dir, "users")
	os.WriteFile(usersFile, []byte("# test users\n"+alice+"\n"+bob+"\n"), 0o600)

	server := fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q\nauth_users_file = %q\n", certFile, keyFile, usersFile) + serverExtra
	cfg := strings.Replace(baseConfig(t.TempDir()), `hostname = "relay.test"`, `hostname = "relay.test"`+"\n"+server, 1) +
		destination("example.test", up.Addr(), p.caFile, "mx.example.test")
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	return &frontDoor{relay: startRelay(t, cfg), up: up, roots: roots}
}

func (f *frontDoor) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: f.roots, ServerName: "relay.test"}
}

func TestInboundSTARTTLSWithAuthRequired(t *testing.T) {
	f := startFrontDoor(t, "auth_required = true\n")
	addr := f.relay.Addr().String()

	// Without AUTH nothing is accepted.
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@sender.test", nil); smtpCode(err) != 530 {
		t.Fatalf("MAIL without AUTH: %v, want 530", err)
	}
	c.Close()

	c, err = smtp.DialStartTLS(addr, f.tlsConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if st, ok := c.TLSConnectionState(); !ok || st.Version < tls.VersionTLS12 {
		t.Fatalf("inbound TLS not negotiated: %+v", st)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", "alice-password")); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	if err := c.Mail("boss@elsewhere.test", nil); smtpCode(err) != 553 {
		t.Fatalf("sender outside alice's patterns: %v, want 553", err)
	}
	if err := c.SendMail("app@sender.test", []string{"rcpt@example.test"}, strings.NewReader(testBody)); err != nil {
		t.Fatalf("send after AUTH: %v", err)
	}
	if !f.up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if strings.Contains(f.relay.logs.String(), "alice-password") {
		t.Error("password in the log")
	}
}

func TestImplicitTLSListener(t *testing.T) {
	f := startFrontDoor(t, "implicit_tls_listen = \"127.0.0.1:0\"\n")
	conn, err := tls.Dial("tcp", f.relay.ImplicitTLSAddr().String(), f.tlsConfig())
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "bob", "bob-password")); err != nil {
		t.Fatalf("AUTH over implicit TLS: %v", err)
	}
	if err := c.SendMail("bob@anywhere.test", []string{"rcpt@example.test"}, strings.NewReader(testBody)); err != nil {
		t.Fatal(err)
	}
	if !f.up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
}

// TestAuthLoginOnLoopbackAndFailureLimit speaks AUTH LOGIN by hand on a
// plain loopback connection (allowed there), then fails twice: the second
// failure (auth_max_failures = 2) ends the connection.
func TestAuthLoginOnLoopbackAndFailureLimit(t *testing.T) {
	f := startFrontDoor(t, "auth_max_failures = 2\n")
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	s := dialRaw(t, f.relay.Addr().String())
	if r := s.cmd("EHLO app.test"); !strings.Contains(r, "AUTH PLAIN LOGIN") || !strings.Contains(r, "STARTTLS") {
		t.Fatalf("EHLO on loopback: %q, want STARTTLS and AUTH PLAIN LOGIN", r)
	}
	if r := s.cmd("AUTH LOGIN"); !strings.HasPrefix(r, "334 "+b64("Username:")) {
		t.Fatalf("AUTH LOGIN: %q", r)
	}
	s.cmd(b64("bob"))
	if r := s.cmd(b64("bob-password")); !strings.HasPrefix(r, "235") {
		t.Fatalf("LOGIN with the right password: %q", r)
	}
	s.cmd("QUIT")

	s = dialRaw(t, f.relay.Addr().String())
	s.cmd("EHLO app.test")
	for i := 1; i <= 2; i++ {
		if r := s.cmd("AUTH PLAIN " + b64("\x00bob\x00wrong-password")); !strings.HasPrefix(r, "535") {
			t.Fatalf("failure %d answered %q, want 535", i, r)
		}
	}
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.r.ReadString('\n'); err != io.EOF {
		t.Fatalf("connection still open after the failure limit (read: %v)", err)
	}
	logs := f.relay.logs.String()
	if strings.Contains(logs, "wrong-password") {
		t.Error("password in the log")
	}
	if !strings.Contains(logs, "too many authentication failures") {
		t.Error("closing not logged")
	}
}

func TestConnectionLimitPerAddress(t *testing.T) {
	p := newPKI(t, "Test CA")
	cfg := strings.Replace(baseConfig(t.TempDir()), `hostname = "relay.test"`, "hostname = \"relay.test\"\nmax_connections_per_ip = 2", 1) +
		destination("example.test", freePort(t), p.caFile, "mx.example.test")
	tr := startRelay(t, cfg)
	first, second := dialRaw(t, tr.Addr().String()), dialRaw(t, tr.Addr().String())
	c, err := net.Dial("tcp", tr.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	reply, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(reply), "421 4.7.0") || !strings.Contains(string(reply), "max_connections_per_ip") {
		t.Fatalf("third connection got %q, want 421 naming the limit", reply)
	}
	first.cmd("QUIT")
	second.cmd("QUIT")
	first.c.Close()
	eventually(t, 5*time.Second, "a slot to free up", func() bool {
		c, err := net.Dial("tcp", tr.Addr().String())
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		line := make([]byte, 3)
		io.ReadFull(c, line)
		return string(line) == "220"
	})
}

// TestCredentialsOnlyInsideTLSOrOnLoopback covers the rule behind AUTH's
// offer for addresses the tests cannot connect from (they use loopback
// only): a plain connection from another machine never sees AUTH.
func TestCredentialsOnlyInsideTLSOrOnLoopback(t *testing.T) {
	for _, c := range []struct {
		tls  bool
		ip   string
		want bool
	}{
		{false, "127.0.0.1", true}, {false, "::1", true}, {false, "10.1.2.3", false},
		{false, "2001:db8::1", false}, {true, "10.1.2.3", true}, {false, "::ffff:10.1.2.3", false},
	} {
		if got := credentialsSafe(c.tls, netip.MustParseAddr(c.ip).Unmap()); got != c.want {
			t.Errorf("tls=%v ip=%s: %v, want %v", c.tls, c.ip, got, c.want)
		}
	}
}
