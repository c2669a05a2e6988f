package policy_test

import (
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
)

// mxPolicy is the policy of one connection to mx.dane.test for recipient
// domain dane.test, by DANE with the given records.
func mxPolicy(t *testing.T, records ...policy.TLSA) *policy.Destination {
	t.Helper()
	d := compile(t, policy.Spec{Domains: []string{"*"}, Upstream: "mx.invalid:25"})
	return d.ForMX(policy.MXHost{Name: "mx.dane.test", Base: "mx.dane.test", Domain: "dane.test",
		DANE: len(records) > 0, TLSA: records, TLSAName: "_25._tcp.mx.dane.test"}, "127.0.0.1:25")
}

func TestDANEEE(t *testing.T) {
	// An untrusted CA, another name and an expired certificate: DANE-EE
	// ignores all three, only the key counts.
	ca, _ := certgen.NewCA("Nobody's CA")
	leaf, _ := ca.Issue(certgen.Options{CommonName: "other", DNSNames: []string{"other.example"},
		NotBefore: time.Now().Add(-90 * 24 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	other, _ := ca.Issue(certgen.Options{DNSNames: []string{"mx.dane.test"}})

	if err := handshake(t, mxPolicy(t, policy.TLSAFor(3, leaf.Cert)), leaf.TLSCertificate(), time.Now()); err != nil {
		t.Errorf("DANE-EE 3 1 1 match: %v", err)
	}
	full := policy.TLSA{Usage: 3, Selector: 0, MatchingType: 1}
	sum := sha256.Sum256(leaf.Cert.Raw)
	full.Data = sum[:]
	if err := handshake(t, mxPolicy(t, full), leaf.TLSCertificate(), time.Now()); err != nil {
		t.Errorf("DANE-EE 3 0 1 match: %v", err)
	}
	err := handshake(t, mxPolicy(t, policy.TLSAFor(3, other.Cert)), leaf.TLSCertificate(), time.Now())
	if classOf(err) != policy.DANEMismatch || !strings.Contains(err.Error(), "_25._tcp.mx.dane.test") ||
		!strings.Contains(err.Error(), policy.TLSAFor(3, leaf.Cert).String()) {
		t.Errorf("DANE-EE mismatch: %v", err)
	}
	if f, _ := policy.AsFailure(err); f == nil || f.RPT() != policy.ResultValidationFailure {
		t.Errorf("DANE-EE mismatch result type: %v", err)
	}
}

func TestDANETA(t *testing.T) {
	root, _ := certgen.NewCA("DANE Root")
	inter, interCert, err := root.Intermediate("DANE Intermediate", certgen.Options{})
	if err != nil {
		t.Fatal(err)
	}
	right, _ := inter.Issue(certgen.Options{DNSNames: []string{"mx.dane.test"}})
	wrong, _ := inter.Issue(certgen.Options{DNSNames: []string{"mx.elsewhere.test"}})
	domain, _ := inter.Issue(certgen.Options{DNSNames: []string{"dane.test"}})
	ta := policy.TLSAFor(2, interCert.Cert)

	if err := handshake(t, mxPolicy(t, ta), right.TLSCertificate(interCert.Cert), time.Now()); err != nil {
		t.Errorf("DANE-TA with the MX name: %v", err)
	}
	if err := handshake(t, mxPolicy(t, ta), domain.TLSCertificate(interCert.Cert), time.Now()); err != nil {
		t.Errorf("DANE-TA with the recipient domain's name: %v", err)
	}
	err = handshake(t, mxPolicy(t, ta), wrong.TLSCertificate(interCert.Cert), time.Now())
	f, _ := policy.AsFailure(err)
	if classOf(err) != policy.DANEMismatch || f.RPT() != policy.ResultCertHostMismatch || !strings.Contains(err.Error(), "mx.elsewhere.test") {
		t.Errorf("DANE-TA with a wrong name: %v", err)
	}
	// The anchor must be sent by the server; a chain without it matches nothing.
	err = handshake(t, mxPolicy(t, ta), right.TLSCertificate(), time.Now())
	if classOf(err) != policy.DANEMismatch {
		t.Errorf("DANE-TA, anchor not sent: %v", err)
	}
	// DANE-TA checks dates, unlike DANE-EE.
	old, _ := inter.Issue(certgen.Options{DNSNames: []string{"mx.dane.test"},
		NotBefore: time.Now().Add(-90 * 24 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	err = handshake(t, mxPolicy(t, ta), old.TLSCertificate(interCert.Cert), time.Now())
	if f, _ := policy.AsFailure(err); classOf(err) != policy.Expired || f.RPT() != policy.ResultCertExpired {
		t.Errorf("DANE-TA, expired leaf: %v", err)
	}
}

// TestDANEUnusableKeepsTLSMandatory: records that SMTP cannot use (PKIX
// usages 0 and 1, a digest of the wrong length) do not authenticate the
// server, and do not let anything weaker in either.
func TestDANEUnusableKeepsTLSMandatory(t *testing.T) {
	ca, _ := certgen.NewCA("Some CA")
	leaf, _ := ca.Issue(certgen.Options{DNSNames: []string{"mx.dane.test"}})
	pkix := policy.TLSAFor(1, leaf.Cert)
	short := policy.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: []byte{1, 2, 3}}
	err := handshake(t, mxPolicy(t, pkix, short), leaf.TLSCertificate(), time.Now())
	f, _ := policy.AsFailure(err)
	if classOf(err) != policy.DANEUnusable || f.RPT() != policy.ResultTLSAInvalid {
		t.Errorf("unusable TLSA: %v", err)
	}
	// Without DANE the same host is judged by the WebPKI (here: a CA the
	// system does not trust).
	err = handshake(t, mxPolicy(t), leaf.TLSCertificate(), time.Now())
	if classOf(err) != policy.UnknownAuthority {
		t.Errorf("no DANE: %v", err)
	}
}
