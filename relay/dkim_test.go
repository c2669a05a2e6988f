package relay

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"tlsrelay/relay/sink"
)

// dkimKey writes a private key as PEM and returns its path and the TXT
// record a DNS server would publish for it.
func dkimKey(t *testing.T, k crypto.Signer, kind string) (string, string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), kind+".key")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	var pub []byte
	switch p := k.Public().(type) {
	case ed25519.PublicKey:
		pub = p
	default:
		pub, _ = x509.MarshalPKIXPublicKey(p)
	}
	return path, fmt.Sprintf("v=DKIM1; k=%s; p=%s", kind, base64.StdEncoding.EncodeToString(pub))
}

func TestDKIMSignsOnceAndVerifiesUpstream(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaFile, rsaTXT := dkimKey(t, rsaKey, "rsa")
	edFile, edTXT := dkimKey(t, edKey, "ed25519")
	dns := map[string]string{
		"s2026._domainkey.sender.test": rsaTXT,
		"ed._domainkey.corp.test":      edTXT,
	}
	lookup := func(name string) ([]string, error) {
		if v, ok := dns[name]; ok {
			return []string{v}, nil
		}
		return nil, fmt.Errorf("no TXT for %s", name)
	}

	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	cfg := baseConfig(t.TempDir()) + destination("example.test", up.Addr(), p.caFile, "mx.example.test") +
		fmt.Sprintf("\n[[dkim]]\ndomain = \"sender.test\"\nselector = \"s2026\"\nprivate_key_file = %q\n", rsaFile) +
		fmt.Sprintf("\n[[dkim]]\ndomain = \"corp.test\"\nselector = \"ed\"\nprivate_key_file = %q\nsubdomains = true\n", edFile)
	tr := startRelay(t, cfg)

	msgs := []struct {
		from, extra string
		wantDomain  string // "" = must not be signed by the relay
	}{
		{from: "App <app@sender.test>", wantDomain: "sender.test"},
		{from: "billing@eu.corp.test", wantDomain: "corp.test"},
		{from: "someone@unsigned.test"},
	}
	for i, m := range msgs {
		body := fmt.Sprintf("From: %s\r\nTo: rcpt@example.test\r\nSubject: dkim %d\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\nMessage-ID: <%d@test>\r\n%s\r\nHello,\r\n.leading dot\r\n\r\n", m.from, i, i, m.extra)
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, body); err != nil {
			t.Fatal(err)
		}
	}
	if !up.Wait(len(msgs), 10*time.Second) {
		t.Fatal("not delivered")
	}
	for _, got := range up.Messages() {
		var i int
		fmt.Sscanf(string(got.Data[bytes.Index(got.Data, []byte("Subject: dkim "))+len("Subject: dkim "):]), "%d", &i)
		m := msgs[i]
		n := strings.Count(string(got.Data), "DKIM-Signature:")
		if m.wantDomain == "" {
			if n != 0 {
				t.Errorf("%s: signed, but no [[dkim]] covers it", m.from)
			}
			continue
		}
		if n != 1 {
			t.Fatalf("%s: %d signatures, want 1:\n%s", m.from, n, got.Data)
		}
		verifs, err := dkim.VerifyWithOptions(bytes.NewReader(got.Data), &dkim.VerifyOptions{LookupTXT: lookup})
		if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != m.wantDomain {
			t.Fatalf("%s: verification after the relay: %v %+v", m.from, err, verifs)
		}
	}

	// A message already signed for the domain is not signed twice.
	var signed []byte
	for _, got := range up.Messages() {
		if bytes.Contains(got.Data, []byte("d=sender.test")) {
			signed = got.Data // delivery order is not submission order
		}
	}
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, string(signed)); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(len(msgs)+1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	last := up.Messages()[len(msgs)]
	if n := strings.Count(string(last.Data), "DKIM-Signature:"); n != 1 {
		t.Errorf("an already signed message has %d signatures after the relay", n)
	}
}

func TestDKIMKeyMustBeStrong(t *testing.T) {
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	weakFile, _ := dkimKey(t, weak, "rsa")
	p := newPKI(t, "Test CA")
	src := baseConfig(t.TempDir()) + destination("example.test", freePort(t), p.caFile, "mx.example.test") +
		fmt.Sprintf("\n[[dkim]]\ndomain = \"sender.test\"\nselector = \"s\"\nprivate_key_file = %q\n", weakFile)
	if _, err := parseConfig(src); err == nil || !strings.Contains(err.Error(), "2048") {
		t.Fatalf("a 1024-bit DKIM key: %v", err)
	}
	src = strings.Replace(src, weakFile, "/nonexistent.key", 1)
	if _, err := parseConfig(src); err == nil || !strings.Contains(err.Error(), "private_key_file") {
		t.Fatalf("a missing DKIM key: %v", err)
	}
}
