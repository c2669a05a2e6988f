package policy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
)

// handshake runs a real TLS handshake over loopback between a server
// presenting cert and a client using d's policy at the given time.
func handshake(t *testing.T, d *policy.Destination, cert tls.Certificate, at time.Time) error {
	t.Helper()
	_, err := handshakeState(t, d, cert, at)
	return err
}

// handshakeState is handshake, also returning the connection state the
// client saw (filled in even when verification refused it).
func handshakeState(t *testing.T, d *policy.Destination, cert tls.Certificate, at time.Time) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	cfg := d.ClientConfig(func() time.Time { return at })
	var state tls.ConnectionState
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		state = cs
		return verify(cs)
	}
	c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
	if err == nil {
		// A connection that succeeds must also pass the re-check.
		var chains [][]*x509.Certificate
		chains, err = d.VerifyState(c.ConnectionState(), func() time.Time { return at })
		if err == nil && len(chains) == 0 {
			err = errors.New("VerifyState passed the connection but returned no verified chain")
		}
		c.Close()
	}
	return state, err
}

func compile(t *testing.T, s policy.Spec) *policy.Destination {
	t.Helper()
	if s.Domains == nil {
		s.Domains = []string{"example.test"}
	}
	if s.Upstream == "" {
		s.Upstream = "mx.example.test:25"
	}
	d, err := policy.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func classOf(err error) policy.Class {
	var f *policy.Failure
	if errors.As(err, &f) {
		return f.Class
	}
	return ""
}

// TestVerificationUsesTheClock moves the clock instead of the certificate:
// the same certificate is accepted inside its validity and refused, with
// the right class and a note about the clock, outside it.
func TestVerificationUsesTheClock(t *testing.T) {
	ca, _ := certgen.NewCA("Clock CA")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	certgen.WriteCertFile(caFile, ca.Cert)
	nb := time.Now().Add(-time.Hour)
	leaf, _ := ca.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"},
		NotBefore: nb, NotAfter: nb.Add(48 * time.Hour)})
	d := compile(t, policy.Spec{CAFile: caFile})

	if err := handshake(t, d, leaf.TLSCertificate(), nb.Add(time.Hour)); err != nil {
		t.Fatalf("inside validity: %v", err)
	}
	err := handshake(t, d, leaf.TLSCertificate(), nb.Add(-2*time.Hour))
	if classOf(err) != policy.NotYetValid || !strings.Contains(err.Error(), "clock") {
		t.Errorf("before notBefore: %v", err)
	}
	err = handshake(t, d, leaf.TLSCertificate(), nb.Add(50*time.Hour))
	if classOf(err) != policy.Expired || !strings.Contains(err.Error(), "check this machine's clock") {
		t.Errorf("an hour after notAfter: %v, want expired with a clock note", err)
	}
	err = handshake(t, d, leaf.TLSCertificate(), nb.Add(30*24*time.Hour))
	if classOf(err) != policy.Expired || strings.Contains(err.Error(), "clock") {
		t.Errorf("weeks after notAfter: %v, want expired without a clock note", err)
	}
}

func TestHostnamePatternsAndPins(t *testing.T) {
	ca, _ := certgen.NewCA("Name CA")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	certgen.WriteCertFile(caFile, ca.Cert)
	leaf, _ := ca.Issue(certgen.Options{CommonName: "a", DNSNames: []string{"smtp.mail.example.test", "*.relay.example.test"}})
	cert := leaf.TLSCertificate()
	now := time.Now()
	cases := []struct {
		names []string
		pins  []string
		want  policy.Class
	}{
		{names: []string{"smtp.mail.example.test"}},
		{names: []string{"x.relay.example.test"}},
		{names: []string{".mail.example.test"}},
		{names: []string{".example.test"}},
		{names: []string{"other.test", "smtp.mail.example.test"}},
		{names: []string{"mail.example.test"}, want: policy.HostnameMismatch},
		{names: []string{".other.test"}, want: policy.HostnameMismatch},
		{names: []string{"smtp.mail.example.test"}, pins: []string{certgen.SPKIPinOf(leaf.Cert)}},
		{names: []string{"smtp.mail.example.test"}, pins: []string{certgen.SPKIPinOf(ca.Cert)}},
		{names: []string{"smtp.mail.example.test"}, pins: []string{"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}, want: policy.PinMismatch},
	}
	for _, c := range cases {
		d := compile(t, policy.Spec{CAFile: caFile, RequireHostname: c.names, PinSHA256: c.pins, ServerName: "smtp.mail.example.test"})
		if got := classOf(handshake(t, d, cert, now)); got != c.want {
			t.Errorf("names %v pins %v: class %q, want %q", c.names, c.pins, got, c.want)
		}
	}
}

func TestSystemRootsDoNotTrustPrivateCA(t *testing.T) {
	ca, _ := certgen.NewCA("Private CA")
	leaf, _ := ca.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"}})
	d := compile(t, policy.Spec{})
	err := handshake(t, d, leaf.TLSCertificate(), time.Now())
	if classOf(err) != policy.UnknownAuthority || !strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("got %v, want unknown_authority suggesting ca_file", err)
	}
}

func TestCompileRefusesUnsafePolicies(t *testing.T) {
	for _, s := range []policy.Spec{
		{TLS: "none"}, {TLS: "skip-verify"}, {MinTLS: "1.1"}, {MinTLS: "1.0"}, {OnFailure: "drop"},
		{PinSHA256: []string{"not base64!"}}, {RequireHostname: []string{"*"}},
		{ClientCertFile: "/x"}, // without a key
	} {
		s.Domains, s.Upstream = []string{"example.test"}, "mx.example.test:25"
		if _, err := policy.Compile(s); err == nil {
			t.Errorf("Compile(%+v) accepted", s)
		}
	}
}

func TestPasswordComesFromFileAndNeverFromPrinting(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("hunter2\n"), 0o600)
	d := compile(t, policy.Spec{AuthUsername: "u", AuthPasswordFile: f})
	if d.AuthPassword.Reveal() != "hunter2" {
		t.Fatalf("password %q", d.AuthPassword.Reveal())
	}
	js, _ := json.Marshal(d)
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s", d, d, d, d.AuthPassword), string(js)} {
		if strings.Contains(s, "hunter2") {
			t.Fatalf("password leaked: %s", s)
		}
	}
}
