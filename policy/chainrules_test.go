package policy_test

import (
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/asn1"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
)

// TestChainRuleViolationsAreNamed: a chain that leads to a trusted root but
// breaks a rule of RFC 5280 (an unknown critical extension, a CA's name
// constraints, an issuer that is not a CA) is refused as what it is, over a
// real handshake, and never explained as an untrusted CA to add to ca_file.
func TestChainRuleViolationsAreNamed(t *testing.T) {
	root, _ := certgen.NewCA("Rules Root")
	caFile := filepath.Join(t.TempDir(), "root.pem")
	certgen.WriteCertFile(caFile, root.Cert)
	const name = "mx.example.test"
	unknownOID := asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 7}
	critical := []pkix.Extension{{Id: unknownOID, Critical: true, Value: []byte{0x05, 0x00}}}
	must := func(iss *certgen.Issued, err error) *certgen.Issued {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return iss
	}
	inter := func(n string, o certgen.Options) (*certgen.CA, *certgen.Issued) {
		t.Helper()
		ca, iss, err := root.Intermediate(n, o)
		if err != nil {
			t.Fatal(err)
		}
		return ca, iss
	}
	leafOpts := certgen.Options{CommonName: name, DNSNames: []string{name}}

	critInter, critInterCert := inter("Critical Intermediate", certgen.Options{ExtraExtensions: critical})
	excluding, excludingCert := inter("Excluding CA", certgen.Options{ExcludedDNSDomains: []string{"example.test"}})
	permitting, permittingCert := inter("Permitting CA", certgen.Options{PermittedDNSDomains: []string{"other.test"}})
	// A root constrained to other.test, trusted through ca_file.
	narrowRootCA, narrowRootFile := func() (*certgen.CA, string) {
		ca, err := certgen.NewCA("Narrow Root")
		if err != nil {
			t.Fatal(err)
		}
		// NewCA takes no options: the root issues a constrained copy of
		// itself (same name and key), and ca_file trusts that copy.
		twin, err := ca.Issue(certgen.Options{CommonName: "Narrow Root", IsCA: true, Key: ca.Key, PermittedDNSDomains: []string{"other.test"}})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "narrow.pem")
		certgen.WriteCertFile(f, twin.Cert)
		return &certgen.CA{Cert: twin.Cert, Key: ca.Key}, f
	}()
	plain := must(root.Issue(certgen.Options{CommonName: "Plain Leaf", DNSNames: []string{"plain.example.test"}}))
	notCA := &certgen.CA{Cert: plain.Cert, Key: plain.Key}

	cases := []struct {
		what   string
		cert   tls.Certificate
		caFile string
		detail []string // each must appear in Detail
		fix    string   // must appear in Fix
	}{
		{what: "leaf with an unknown critical extension",
			cert:   must(root.Issue(certgen.Options{CommonName: name, DNSNames: []string{name}, ExtraExtensions: critical})).TLSCertificate(),
			detail: []string{`the certificate "CN=mx.example.test`, "critical extension 1.3.6.1.4.1.55555.7", "does not understand"},
			fix:    "reissue"},
		{what: "intermediate with an unknown critical extension",
			cert:   must(critInter.Issue(leafOpts)).TLSCertificate(critInterCert.Cert),
			detail: []string{`the certificate "CN=Critical Intermediate`, "critical extension 1.3.6.1.4.1.55555.7"},
			fix:    "Critical Intermediate"},
		{what: "intermediate excluding the leaf's name",
			cert:   must(excluding.Issue(leafOpts)).TLSCertificate(excludingCert.Cert),
			detail: []string{`the CA "CN=Excluding CA`, "not allowed to issue", "name constraints", `"mx.example.test"`},
			fix:    "name constraints"},
		{what: "intermediate permitting other names only",
			cert:   must(permitting.Issue(leafOpts)).TLSCertificate(permittingCert.Cert),
			detail: []string{`the CA "CN=Permitting CA`, "not allowed to issue", "name constraints"},
			fix:    "name constraints"},
		{what: "trusted root constrained to other names",
			cert: must(narrowRootCA.Issue(leafOpts)).TLSCertificate(), caFile: narrowRootFile,
			detail: []string{`the CA "CN=Narrow Root`, "not allowed to issue", "name constraints"},
			fix:    "name constraints"},
		{what: "issuer that is not a CA",
			cert:   must(notCA.Issue(leafOpts)).TLSCertificate(plain.Cert),
			detail: []string{`"CN=Plain Leaf`, "not a CA certificate"},
			fix:    "CA certificate"},
	}
	for _, c := range cases {
		file := caFile
		if c.caFile != "" {
			file = c.caFile
		}
		d := compile(t, policy.Spec{CAFile: file, ServerName: name})
		err := handshake(t, d, c.cert, time.Now())
		f, ok := policy.AsFailure(err)
		if !ok {
			t.Errorf("%s: %v, want a handshake failure", c.what, err)
			continue
		}
		if f.Class != policy.Handshake {
			t.Errorf("%s: class %s, want handshake: %v", c.what, f.Class, err)
		}
		for _, want := range c.detail {
			if !strings.Contains(f.Detail, want) {
				t.Errorf("%s: detail %q does not say %q", c.what, f.Detail, want)
			}
		}
		if !strings.Contains(f.Fix, c.fix) || strings.Contains(f.Fix, "ca_file") || strings.Contains(f.Detail, "does not trust") {
			t.Errorf("%s: fix %q (detail %q), want one about %q and not about trusting a CA", c.what, f.Fix, f.Detail, c.fix)
		}
	}
}
