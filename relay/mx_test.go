package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/mx/mxtest"
	"tlsrelay/relay/sink"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/upstream"
)

// mxWorld is mxtest's World with a relay to start in it.
type mxWorld struct {
	*mxtest.World
	t *testing.T
}

func newMXWorld(t *testing.T) *mxWorld { return &mxWorld{World: mxtest.New(t), t: t} }

// relay starts a relay whose one destination delivers to mail exchangers.
// The World's hosts are on loopback: internal addresses are allowed.
func (w *mxWorld) relay(extra ...string) *testRelay {
	w.t.Helper()
	return w.relayWith("allow_internal_addresses = true", extra...)
}

// relayWith is relay with dnsExtra in the [dns] table.
func (w *mxWorld) relayWith(dnsExtra string, extra ...string) *testRelay {
	w.t.Helper()
	cfg := baseConfig(w.t.TempDir()) + fmt.Sprintf("\n[dns]\nresolver = %q\n%s\n", w.DNS.Addr(), dnsExtra) +
		fmt.Sprintf("\n[[destination]]\ndomains = [\"*\"]\nupstream = \"mx\"\nca_file = %q\n", w.CAFile) + strings.Join(extra, "\n") + "\n"
	return startRelayWith(w.t, cfg, Options{MXDial: w.Dial})
}

var tlsa = mxtest.TLSA

// replyOf submits one message to rcpt and returns the reply's error (nil
// for 250).
func replyOf(tr *testRelay, rcpt string) error {
	_, err := submit(tr.Addr().String(), "app@sender.test", []string{rcpt}, testBody)
	return err
}

func wantFailure(t *testing.T, err error, code int, class string, says ...string) {
	t.Helper()
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code != code || !strings.Contains(se.Message, "="+class+":") {
		t.Errorf("got %v, want %d naming %s", err, code, class)
		return
	}
	for _, s := range says {
		if !strings.Contains(se.Message, s) {
			t.Errorf("reply lacks %q: %s", s, se.Message)
		}
	}
}

func TestMXDANE(t *testing.T) {
	w := newMXWorld(t)
	w.DNS.Zone("dane.test", true)
	other, _ := certgen.NewCA("Nobody's CA") // DANE needs no WebPKI
	eeLeaf, _ := other.Issue(certgen.Options{DNSNames: []string{"whatever.example"},
		NotBefore: time.Now().Add(-90 * 24 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	root, _ := certgen.NewCA("DANE-TA Root")
	inter, interCert, _ := root.Intermediate("DANE-TA Intermediate", certgen.Options{})
	taRight, _ := inter.Issue(certgen.Options{DNSNames: []string{"mx.ta.dane.test"}})
	taWrong, _ := inter.Issue(certgen.Options{DNSNames: []string{"mx.elsewhere.test"}})

	eeOK := w.Host("mx.ee.dane.test", sink.Options{Cert: eeLeaf.TLSCertificate()})
	eeBad := w.Host("mx.eebad.dane.test", sink.Options{Cert: eeLeaf.TLSCertificate()})
	taOK := w.Host("mx.ta.dane.test", sink.Options{Cert: taRight.TLSCertificate(interCert.Cert)})
	taBad := w.Host("mx.tabad.dane.test", sink.Options{Cert: taWrong.TLSCertificate(interCert.Cert)})
	unusable := w.Host("mx.unusable.dane.test", sink.Options{})
	servfail := w.Host("mx.servfail.dane.test", sink.Options{})
	wrongKey, _ := other.Issue(certgen.Options{DNSNames: []string{"x"}})
	w.DNS.MustAdd(
		"ee.dane.test. MX 10 mx.ee.dane.test.", tlsa("mx.ee.dane.test", policy.TLSAFor(3, eeLeaf.Cert)),
		"eebad.dane.test. MX 10 mx.eebad.dane.test.", tlsa("mx.eebad.dane.test", policy.TLSAFor(3, wrongKey.Cert)),
		"ta.dane.test. MX 10 mx.ta.dane.test.", tlsa("mx.ta.dane.test", policy.TLSAFor(2, interCert.Cert)),
		"tabad.dane.test. MX 10 mx.tabad.dane.test.", tlsa("mx.tabad.dane.test", policy.TLSAFor(2, interCert.Cert)),
		"unusable.dane.test. MX 10 mx.unusable.dane.test.", tlsa("mx.unusable.dane.test", policy.TLSAFor(1, eeLeaf.Cert)),
		"servfail.dane.test. MX 10 mx.servfail.dane.test.",
	)
	w.DNS.Fail("_25._tcp.mx.servfail.dane.test", 52, 2) // TLSA SERVFAIL
	tr := w.relay(`on_failure = "reject"`)

	if err := replyOf(tr, "a@ee.dane.test"); err != nil || eeOK.Count() != 1 {
		t.Errorf("DANE-EE match (untrusted CA, wrong name): %v, %d delivered", err, eeOK.Count())
	}
	wantFailure(t, replyOf(tr, "a@eebad.dane.test"), 554, "dane_mismatch", "_25._tcp.mx.eebad.dane.test")
	if err := replyOf(tr, "a@ta.dane.test"); err != nil || taOK.Count() != 1 {
		t.Errorf("DANE-TA with the right name: %v, %d delivered", err, taOK.Count())
	}
	wantFailure(t, replyOf(tr, "a@tabad.dane.test"), 554, "dane_mismatch", "mx.elsewhere.test")
	// Usable or not, TLSA records make TLS mandatory: the host's valid
	// WebPKI certificate does not stand in for DANE.
	wantFailure(t, replyOf(tr, "a@unusable.dane.test"), 554, "dane_unusable")
	wantFailure(t, replyOf(tr, "a@servfail.dane.test"), 451, "dns", "nothing weaker is tried")
	for _, s := range []*sink.Sink{eeBad, taBad, unusable, servfail} {
		if s.Count() != 0 {
			t.Errorf("a refused host got %d messages", s.Count())
		}
	}
	logs := tr.logs.String()
	for _, want := range []string{"tlsrpt_result=validation-failure", "tlsrpt_result=certificate-host-mismatch", "tlsrpt_result=tlsa-invalid", "tlsrpt_result=dnssec-invalid", "security=dane"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

// TestMXTLSAWithoutADIsIgnored: TLSA records in a zone the resolver did
// not validate prove nothing; the host is judged at the next level
// (verify), where a valid certificate for its name is needed.
func TestMXTLSAWithoutADIsIgnored(t *testing.T) {
	w := newMXWorld(t)
	w.DNS.Zone("plain.test", false)
	good := w.Host("mx.plain.test", sink.Options{})
	w.DNS.MustAdd("plain.test. MX 10 mx.plain.test.", tlsa("mx.plain.test", policy.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: make([]byte, 32)}))
	tr := w.relay(`on_failure = "reject"`)
	if err := replyOf(tr, "a@plain.test"); err != nil || good.Count() != 1 {
		t.Fatalf("unvalidated TLSA, valid certificate: %v, %d delivered", err, good.Count())
	}
	if !strings.Contains(tr.logs.String(), "security=verify") {
		t.Error("not delivered under verify")
	}
	tr2 := w.relay(`on_failure = "reject"`, `mx_security = "dane"`)
	wantFailure(t, replyOf(tr2, "a@plain.test"), 554, "mx_security", `mx_security = "dane" requires DANE`)
}

func TestMXSTS(t *testing.T) {
	w := newMXWorld(t)
	pol := func(mode string, mx ...string) string { return mxtest.Policy(mode, 86400, mx...) }
	// enforce: mx1 (preferred) is not in the policy and is skipped.
	notListed := w.Host("mx1.enforce.test", sink.Options{})
	listed := w.Host("mx2.enforce.test", sink.Options{})
	w.DNS.MustAdd("enforce.test. MX 10 mx1.enforce.test.", "enforce.test. MX 20 mx2.enforce.test.")
	w.STS("enforce.test", "1", pol("enforce", "mx2.enforce.test"))
	// enforce with an expired certificate: deferred, not sent.
	expired := w.Host("mx.expired.test", sink.Options{Cert: func() tls.Certificate {
		iss, _ := w.CA.Issue(certgen.Options{DNSNames: []string{"mx.expired.test"}, NotBefore: time.Now().Add(-90 * 24 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
		return iss.TLSCertificate()
	}()})
	w.DNS.MustAdd("expired.test. MX 10 mx.expired.test.")
	w.STS("expired.test", "1", pol("enforce", "*.expired.test"))
	// testing: the host is not listed, and the mail goes all the same.
	testing := w.Host("mx.testing.test", sink.Options{})
	w.DNS.MustAdd("testing.test. MX 10 mx.testing.test.")
	w.STS("testing.test", "1", pol("testing", "other.testing.test"))
	// no policy: verify.
	nopolicy := w.Host("mx.nopolicy.test", sink.Options{})
	w.Host("mx.mismatch.test", sink.Options{Cert: w.Leaf("other.mismatch.test").TLSCertificate()})
	w.DNS.MustAdd("nopolicy.test. MX 10 mx.nopolicy.test.", "mismatch.test. MX 10 mx.mismatch.test.")
	// a redirecting policy server.
	w.Host("mx.redirect.test", sink.Options{})
	w.DNS.MustAdd("redirect.test. MX 10 mx.redirect.test.")
	w.STS("redirect.test", "1", "redirect")

	tr := w.relay(`on_failure = "reject"`)
	if err := replyOf(tr, "a@enforce.test"); err != nil || listed.Count() != 1 || notListed.Count() != 0 {
		t.Errorf("enforce, first MX not listed: %v; listed got %d, not listed %d", err, listed.Count(), notListed.Count())
	}
	wantFailure(t, replyOf(tr, "a@expired.test"), 554, "expired")
	if expired.Count() != 0 {
		t.Error("the expired host got the message")
	}
	if err := replyOf(tr, "a@testing.test"); err != nil || testing.Count() != 1 {
		t.Errorf("testing mode: %v, %d delivered", err, testing.Count())
	}
	if err := replyOf(tr, "a@nopolicy.test"); err != nil || nopolicy.Count() != 1 {
		t.Errorf("no policy: %v, %d delivered", err, nopolicy.Count())
	}
	wantFailure(t, replyOf(tr, "a@mismatch.test"), 554, "hostname_mismatch")
	logs := tr.logs.String()
	for _, want := range []string{"security=mta-sts", "tlsrpt_result=validation-failure", "MTA-STS policy in testing mode does not list this mail exchanger", "tlsrpt_result=certificate-expired"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// The cached policy is used when the fetch fails: the policy server
	// breaks and the id changes; mx1 stays excluded.
	w.SetPolicy("enforce.test", "") // 200 with an empty body: invalid
	w.DNS.Remove("_mta-sts.enforce.test", 16)
	w.DNS.MustAdd(`_mta-sts.enforce.test. TXT "v=STSv1; id=2"`)
	listed.Close()
	// mx2 is down, mx1 still excluded by the policy cached under id 1.
	wantFailure(t, replyOf(tr, "a@enforce.test"), 554, "mx_security", "(id 1, mode enforce)")
	if notListed.Count() != 0 {
		t.Error("the host the cached policy excludes got the message")
	}

	// Under dane-or-sts a policy that cannot be had is no policy (verify),
	// with the failure recorded.
	if !strings.Contains(tr.logs.String(), "tlsrpt_result=sts-policy-invalid") {
		t.Error("the failed fetch is not logged")
	}
	// mx_security = "sts": a redirect is no policy.
	tr2 := w.relay(`on_failure = "reject"`, `mx_security = "sts"`)
	wantFailure(t, replyOf(tr2, "a@redirect.test"), 554, "mx_security", "redirect")
	wantFailure(t, replyOf(tr2, "a@nopolicy.test"), 554, "mx_security", "publishes no MTA-STS policy")

	// The day's report for testing.test holds the recorded failure and the
	// one for nopolicy.test a success, once the relay has stopped (the
	// counts are written on a timer and at shutdown).
	tr.stop()
	raw, err := os.ReadFile(filepath.Join(tr.Config().Queue.Dir, "tlsrpt", time.Now().UTC().Format(time.DateOnly), "testing.test.json"))
	if err != nil || !strings.Contains(string(raw), `"result-type": "validation-failure"`) || !strings.Contains(string(raw), `"policy-type": "sts"`) {
		t.Errorf("testing.test report: %v\n%s", err, raw)
	}
	raw, err = os.ReadFile(filepath.Join(tr.Config().Queue.Dir, "tlsrpt", time.Now().UTC().Format(time.DateOnly), "nopolicy.test.json"))
	if err != nil || !strings.Contains(string(raw), `"total-successful-session-count": 1`) || !strings.Contains(string(raw), `"no-policy-found"`) {
		t.Errorf("nopolicy.test report: %v\n%s", err, raw)
	}
}

// TestMXInternalAddressesRefused: without [dns] allow_internal_addresses,
// a mail exchanger that resolves to loopback is not tried, nor is an
// MTA-STS policy server there, and the reply says why and what allows it.
func TestMXInternalAddressesRefused(t *testing.T) {
	w := newMXWorld(t)
	lo := w.Host("mx.lo.test", sink.Options{})
	w.DNS.MustAdd("lo.test. MX 10 mx.lo.test.")
	w.STS("sts.test", "1", mxtest.Policy("enforce", 86400, "mx.sts.test"))
	sts := w.Host("mx.sts.test", sink.Options{})
	w.DNS.MustAdd("sts.test. MX 10 mx.sts.test.")
	tr := w.relayWith("", `on_failure = "reject"`, `mx_security = "sts"`)
	wantFailure(t, replyOf(tr, "a@sts.test"), 554, "mx_security",
		"the MTA-STS policy server mta-sts.sts.test resolves to 127.0.0.", "an internal address; refused (set [dns] allow_internal_addresses to allow)")
	tr2 := w.relayWith("", `on_failure = "reject"`, `mx_security = "verify"`)
	wantFailure(t, replyOf(tr2, "a@lo.test"), 451, "dns",
		"the mail exchanger mx.lo.test resolves to 127.0.0.", "an internal address; refused (set [dns] allow_internal_addresses to allow)")
	if lo.Count() != 0 || sts.Count() != 0 {
		t.Errorf("an internal mail exchanger got mail: %d, %d", lo.Count(), sts.Count())
	}
	// Allowed, the same mail exchanger is used.
	tr3 := w.relay(`on_failure = "reject"`, `mx_security = "verify"`)
	if err := replyOf(tr3, "a@lo.test"); err != nil || lo.Count() != 1 {
		t.Errorf("allowed: %v, %d delivered", err, lo.Count())
	}
}

func TestMXNullAndImplicit(t *testing.T) {
	w := newMXWorld(t)
	implicit := w.Host("implicit.test", sink.Options{})
	w.DNS.MustAdd("null.test. MX 0 .")
	tr := w.relay(`on_failure = "reject"`)
	if err := replyOf(tr, "a@implicit.test"); err != nil || implicit.Count() != 1 {
		t.Errorf("implicit MX: %v, %d delivered", err, implicit.Count())
	}
	wantFailure(t, replyOf(tr, "a@null.test"), 556, "null_mx", "RFC 7505")
	wantFailure(t, replyOf(tr, "a@nowhere.test"), 550, "no_such_domain")

	// In queue mode a null MX bounces at once (it is permanent).
	tq := w.relay()
	if err := replyOf(tq, "a@null.test"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the null MX recipient failed", func() bool {
		return strings.Contains(tq.logs.String(), "message done") && strings.Contains(tq.logs.String(), "failed=1")
	})
}

// TestMXREQUIRETLS: a REQUIRETLS message goes only to a mail exchanger
// found securely (DNSSEC or MTA-STS) that offers REQUIRETLS.
func TestMXREQUIRETLS(t *testing.T) {
	w := newMXWorld(t)
	w.DNS.Zone("signed.test", true)
	offers := w.Host("mx.offers.signed.test", sink.Options{REQUIRETLS: true})
	lacks := w.Host("mx.lacks.signed.test", sink.Options{})
	insecure := w.Host("mx.insecure.test", sink.Options{REQUIRETLS: true})
	w.DNS.MustAdd("offers.signed.test. MX 10 mx.offers.signed.test.", "lacks.signed.test. MX 10 mx.lacks.signed.test.",
		"insecure.test. MX 10 mx.insecure.test.")
	tr := w.relay(`on_failure = "reject"`)
	// REQUIRETLS reaches the relay only inside inbound TLS (TestREQUIRETLS);
	// here the delivery of such a spooled message is driven directly.
	deliver := func(rcpt string) *outcome {
		env := spool.Envelope{ID: "requiretls-test", From: "app@sender.test", Recipients: []string{rcpt}, Received: time.Now(), RequireTLS: true}
		body := upstream.Body{Size: int64(len(testBody)), Open: func() io.Reader { return strings.NewReader(testBody) }, RequireTLS: true}
		dest := tr.Config().Table.Lookup(domainOf(rcpt))
		return tr.attempt(context.Background(), env, dest, []string{rcpt}, body, true)
	}
	if o := deliver("a@offers.signed.test"); !o.delivered || !offers.Messages()[0].RequireTLS {
		t.Errorf("secure MX offering REQUIRETLS: %+v", o.failureFor("a@offers.signed.test"))
	}
	if f := deliver("a@lacks.signed.test").failureFor("a@lacks.signed.test"); f == nil || f.Class != policy.RequireTLS {
		t.Errorf("secure MX without REQUIRETLS: %v", f)
	}
	if f := deliver("a@insecure.test").failureFor("a@insecure.test"); f == nil || f.Class != policy.RequireTLS || !strings.Contains(f.Detail, "not found securely") {
		t.Errorf("insecure MX: %v", f)
	}
	if lacks.Count() != 0 || insecure.Count() != 0 {
		t.Errorf("REQUIRETLS mail went where it must not: %d, %d", lacks.Count(), insecure.Count())
	}
}

// TestMXTLSRequiredNo: the header relaxes MTA-STS to verify, and nothing
// else: a DANE failure stays a failure, and so does a certificate that
// fails verify.
func TestMXTLSRequiredNo(t *testing.T) {
	w := newMXWorld(t)
	notListed := w.Host("mx.sts.test", sink.Options{})
	w.DNS.MustAdd("sts.test. MX 10 mx.sts.test.")
	w.STS("sts.test", "1", mxtest.Policy("enforce", 86400, "other.sts.test"))
	w.DNS.Zone("dane.test", true)
	daneHost := w.Host("mx.dane.test", sink.Options{})
	other, _ := certgen.NewCA("Other")
	wrong, _ := other.Issue(certgen.Options{DNSNames: []string{"x"}})
	w.DNS.MustAdd("dane.test. MX 10 mx.dane.test.", tlsa("mx.dane.test", policy.TLSAFor(3, wrong.Cert)))
	tr := w.relay(`on_failure = "reject"`)
	optional := "From: app@sender.test\r\nTLS-Required: No\r\nSubject: x\r\n\r\nbody\r\n"

	wantFailure(t, replyOf(tr, "a@sts.test"), 554, "mx_security")
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"a@sts.test"}, optional); err != nil || notListed.Count() != 1 {
		t.Errorf("TLS-Required: No past MTA-STS: %v, %d delivered", err, notListed.Count())
	}
	_, err := submit(tr.Addr().String(), "app@sender.test", []string{"a@dane.test"}, optional)
	wantFailure(t, err, 554, "dane_mismatch")
	if daneHost.Count() != 0 {
		t.Error("TLS-Required: No relaxed DANE")
	}

	// An explicit mx_security = "sts" is the operator's requirement: the
	// header does not lower it.
	strict := w.relay(`on_failure = "reject"`, `mx_security = "sts"`)
	_, err = submit(strict.Addr().String(), "app@sender.test", []string{"a@sts.test"}, optional)
	wantFailure(t, err, 554, "mx_security")
	if notListed.Count() != 1 {
		t.Error("TLS-Required: No relaxed an explicit mx_security = \"sts\"")
	}
}
