package policy_test

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
)

// TestPinOnlyOnAWeakPathIsRefused builds a leaf that verifies by two paths
// to one trusted root: through a cross-signed issuing CA straight to the
// root (strong, no pinned key), and through an intermediate with a 1024-bit
// RSA key (which carries the pinned key). The pin may only be satisfied by
// a chain that passes every check, so the connection must be refused —
// whichever order the server sends its certificates in.
func TestPinOnlyOnAWeakPathIsRefused(t *testing.T) {
	root, _ := certgen.NewCA("Cross Root")
	weak, weakCert, err := root.Intermediate("Weak Intermediate", certgen.Options{RSABits: 1024})
	if err != nil {
		t.Fatal(err)
	}
	issuing, viaWeak, err := weak.Intermediate("Issuing CA", certgen.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The same issuing CA (name and key), cross-signed by the root.
	_, viaRoot, err := root.Intermediate("Issuing CA", certgen.Options{Key: issuing.Key})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := issuing.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"}})
	caFile := filepath.Join(t.TempDir(), "root.pem")
	certgen.WriteCertFile(caFile, root.Cert)
	now := time.Now()

	orders := map[string]tls.Certificate{
		"strong path first": leaf.TLSCertificate(viaRoot.Cert, viaWeak.Cert, weakCert.Cert),
		"weak path first":   leaf.TLSCertificate(viaWeak.Cert, weakCert.Cert, viaRoot.Cert),
	}
	for name, cert := range orders {
		// Pinned key only on the weak path: refused, and the weak key is named.
		d := compile(t, policy.Spec{CAFile: caFile, PinSHA256: []string{certgen.SPKIPinOf(weakCert.Cert)}})
		cs, err := handshakeState(t, d, cert, now)
		if classOf(err) != policy.InsecureAlgorithm || !strings.Contains(err.Error(), "Weak Intermediate") ||
			!strings.Contains(err.Error(), "1024-bit RSA") {
			t.Errorf("%s, pin on the weak intermediate: %v, want insecure_algorithm naming its 1024-bit key", name, err)
		}
		in := d.Inspect(cs, func() time.Time { return now })
		if in.Failure == nil || in.Failure.Class != policy.InsecureAlgorithm || in.PinOK != nil && *in.PinOK {
			t.Errorf("%s: check would report failure %v, pin_ok %v", name, in.Failure, in.PinOK)
		}

		// The issuing CA's key is on the strong path too: accepted.
		d = compile(t, policy.Spec{CAFile: caFile, PinSHA256: []string{certgen.SPKIPinOf(viaRoot.Cert)}})
		if err := handshake(t, d, cert, now); err != nil {
			t.Errorf("%s, pin on the issuing CA (on the strong path): %v", name, err)
		}
		// No pins: the strong path suffices.
		d = compile(t, policy.Spec{CAFile: caFile})
		if err := handshake(t, d, cert, now); err != nil {
			t.Errorf("%s, no pins: %v", name, err)
		}
	}
	// Only the weak path sent: refused even without pins.
	d := compile(t, policy.Spec{CAFile: caFile})
	if err := handshake(t, d, leaf.TLSCertificate(viaWeak.Cert, weakCert.Cert), now); classOf(err) != policy.InsecureAlgorithm {
		t.Errorf("weak path only: %v, want insecure_algorithm", err)
	}
}
