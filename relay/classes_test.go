package relay

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/mx/mxtest"
	"tlsrelay/relay/oauth/oauthtest"
	"tlsrelay/relay/sink"
)

// TestEveryTLSFailureIsNamed starts one upstream per failure class, each
// with certificates made here, and checks that the relay refuses to send,
// names the class in its reply and its log, and that nothing arrived.
func TestEveryTLSFailureIsNamed(t *testing.T) {
	p := newPKI(t, "Test CA")
	const name = "mx.example.test"
	now := time.Now()
	issue := func(ca *certgen.CA, o certgen.Options) *certgen.Issued {
		t.Helper()
		if o.CommonName == "" {
			o.CommonName = name
		}
		if o.DNSNames == nil {
			o.DNSNames = []string{name}
		}
		iss, err := ca.Issue(o)
		if err != nil {
			t.Fatalf("issue %+v: %v", o, err)
		}
		return iss
	}
	intermediate := func(o certgen.Options) (*certgen.CA, *certgen.Issued) {
		t.Helper()
		ica, iss, err := p.ca.Intermediate("Test Intermediate", o)
		if err != nil {
			t.Fatal(err)
		}
		return ica, iss
	}
	selfSigned, err := certgen.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := certgen.NewCA("Other CA")
	if err != nil {
		t.Fatal(err)
	}
	goodInter, goodInterCert := intermediate(certgen.Options{})
	oldInter, oldInterCert := intermediate(certgen.Options{NotBefore: now.Add(-60 * 24 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})

	cases := []struct {
		class string
		opts  sink.Options
		extra []string // more policy keys
		says  string   // what the reply must also say
	}{
		{class: "expired", opts: sink.Options{Cert: issue(p.ca, certgen.Options{NotBefore: now.Add(-90 * 24 * time.Hour), NotAfter: now.Add(-48 * time.Hour)}).TLSCertificate()}, says: "renew the certificate on mx.example.test"},
		{class: "expired", opts: sink.Options{Cert: issue(oldInter, certgen.Options{NotBefore: now.Add(-30 * 24 * time.Hour)}).TLSCertificate(oldInterCert.Cert)}, says: "Test Intermediate"},
		{class: "not_yet_valid", opts: sink.Options{Cert: issue(p.ca, certgen.Options{NotBefore: now.Add(48 * time.Hour)}).TLSCertificate()}, says: "clock"},
		{class: "unknown_authority", opts: sink.Options{Cert: (&certgen.Issued{Cert: selfSigned.Cert, Key: selfSigned.Key}).TLSCertificate()}},
		{class: "unknown_authority", opts: sink.Options{Cert: issue(otherCA, certgen.Options{}).TLSCertificate()}},
		{class: "incomplete_chain", opts: sink.Options{Cert: issue(goodInter, certgen.Options{IssuingCertificateURL: []string{"http://127.0.0.1:9/intermediate.crt"}}).TLSCertificate()}, says: "missing issuer"},
		{class: "hostname_mismatch", opts: sink.Options{Cert: issue(p.ca, certgen.Options{DNSNames: []string{"other.example.test"}}).TLSCertificate()}, says: `valid for "other.example.test"`},
		{class: "pin_mismatch", opts: sink.Options{Cert: issue(p.ca, certgen.Options{}).TLSCertificate()},
			extra: []string{`pin_sha256 = ["` + certgen.SPKIPinOf(otherCA.Cert) + `"]`}},
		{class: "tls_version", opts: sink.Options{Cert: issue(p.ca, certgen.Options{}).TLSCertificate(), MaxVersion: tls.VersionTLS11}, says: "only speaks TLS 1.1"},
		{class: "tls_version", opts: sink.Options{Cert: issue(p.ca, certgen.Options{}).TLSCertificate(), MaxVersion: tls.VersionTLS12},
			extra: []string{`min_tls = "1.3"`}, says: "only speaks TLS 1.2"},
		{class: "starttls_missing", opts: sink.Options{NoTLS: true}},
		{class: "insecure_algorithm", opts: sink.Options{Cert: issue(p.ca, certgen.Options{RSABits: 1024}).TLSCertificate()}},
		{class: "handshake", opts: sink.Options{NoTLS: true}, extra: []string{`tls = "implicit"`}},
	}
	sha1Leaf := issue(p.ca, certgen.Options{SignatureAlgorithm: x509.ECDSAWithSHA1})
	cases = append(cases, struct {
		class string
		opts  sink.Options
		extra []string
		says  string
	}{class: "insecure_algorithm", opts: sink.Options{Cert: sha1Leaf.TLSCertificate()}, says: "SHA1"})
	// The working case proves the harness itself can deliver.
	okSink := startSink(t, sink.Options{Cert: issue(goodInter, certgen.Options{}).TLSCertificate(goodInterCert.Cert)})

	cfg := baseConfig(t.TempDir()) + destination("ok.test", okSink.Addr(), p.caFile, name, `on_failure = "reject"`)
	sinks := make([]*sink.Sink, len(cases))
	for i, c := range cases {
		sinks[i] = startSink(t, c.opts)
		cfg += destination(domainFor(i), sinks[i].Addr(), p.caFile, name, append([]string{`on_failure = "reject"`}, c.extra...)...)
	}
	tr := startRelay(t, cfg)
	addr := tr.Addr().String()

	if _, err := submit(addr, "app@sender.test", []string{"a@ok.test"}, testBody); err != nil {
		t.Fatalf("control case through an intermediate: %v", err)
	}
	for i, c := range cases {
		_, err := submit(addr, "app@sender.test", []string{"a@" + domainFor(i)}, testBody)
		se, ok := err.(*smtp.SMTPError)
		if !ok || se.Code/100 != 5 || !strings.Contains(se.Message, "tls_failure="+c.class+":") {
			t.Errorf("case %d (%s): got %v, want a 5xx naming tls_failure=%s", i, c.class, err, c.class)
			continue
		}
		if !strings.Contains(se.Message, c.says) {
			t.Errorf("case %d (%s): reply does not say %q: %s", i, c.class, c.says, se.Message)
		}
		if !strings.Contains(se.Message, "fix:") {
			t.Errorf("case %d (%s): reply has no fix: %s", i, c.class, se.Message)
		}
		if n := sinks[i].Count(); n != 0 {
			t.Errorf("case %d (%s): upstream received %d messages", i, c.class, n)
		}
		if !strings.Contains(tr.logs.String(), "tls_failure="+c.class) {
			t.Errorf("case %d (%s): no log line with tls_failure=%s", i, c.class, c.class)
		}
	}
	if okSink.Count() != 1 {
		t.Errorf("control upstream received %d messages, want 1", okSink.Count())
	}
}

func domainFor(i int) string { return "case" + string(rune('a'+i)) + ".test" }

// TestEveryLoginFailureIsNamed covers the classes of OAuth logins end to
// end: oauth_token (the token endpoint refused: Entra's AADSTS7000215 for
// a wrong client secret), auth after a valid token (Exchange's 5.7.139,
// SMTP AUTH disabled), auth for SendAsDenied at the end of the message,
// and the working case; each in the reply, the fix and the log.
func TestEveryLoginFailureIsNamed(t *testing.T) {
	p := newPKI(t, "Test CA")
	const name = "mx.example.test"
	ep, err := oauthtest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	ep.AddClient("app-ok", "good-secret", "app@sender.test")
	t.Setenv("GOOD_SECRET", "good-secret")
	t.Setenv("BAD_SECRET", "not-the-secret")
	oauthSink := func(o sink.OAuthOptions) *sink.Sink {
		o.Valid = ep.Valid
		return startSink(t, sink.Options{Cert: p.leaf(t, name).TLSCertificate(), OAuth: &o})
	}
	oauthTable := func(secretEnv string) []string {
		return []string{`on_failure = "reject"`, `[destination.oauth]`, `flow = "client_credentials"`, `mailbox = "app@sender.test"`,
			`client_id = "app-ok"`, `client_secret_env = "` + secretEnv + `"`, `token_url = "` + ep.TokenURL() + `"`,
			`scopes = ["https://outlook.office365.com/.default"]`, `ca_file = "` + ep.CAFile + `"`}
	}
	cases := []struct {
		domain, class string
		up            *sink.Sink
		secretEnv     string
		says          []string
	}{
		{"ok.test", "", oauthSink(sink.OAuthOptions{Immediate: true}), "GOOD_SECRET", nil},
		{"secret.test", "oauth_token", oauthSink(sink.OAuthOptions{}), "BAD_SECRET", []string{"invalid_client", "AADSTS7000215", "create a new client secret"}},
		{"disabled.test", "auth", oauthSink(sink.OAuthOptions{Immediate: true, After: func(string) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."}
		}}), "GOOD_SECRET", []string{"5.7.139", "Set-TransportConfig -SmtpClientAuthenticationDisabled $false", "Set-CASMailbox -Identity app@sender.test -SmtpClientAuthenticationDisabled $false"}},
		{"sendas.test", "auth", startSink(t, sink.Options{Cert: p.leaf(t, name).TLSCertificate(), OAuth: &sink.OAuthOptions{Valid: ep.Valid},
			RefuseMail: func(string) *smtp.SMTPError {
				return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252}, Message: "SendAsDenied; app@sender.test not allowed to send as other@sender.test"}
			}}), "GOOD_SECRET", []string{"5.2.252", "send as app@sender.test", "Add-RecipientPermission -Identity <sender> -Trustee app@sender.test -AccessRights SendAs"}},
	}
	cfg := baseConfig(t.TempDir())
	for _, c := range cases {
		cfg += destination(c.domain, c.up.Addr(), p.caFile, name, oauthTable(c.secretEnv)...)
	}
	tr := startRelay(t, cfg)
	for _, c := range cases {
		from := "app@sender.test"
		if c.domain == "sendas.test" {
			from = "other@sender.test"
		}
		_, err := submit(tr.Addr().String(), from, []string{"a@" + c.domain}, testBody)
		if c.class == "" {
			if err != nil || c.up.Count() != 1 {
				t.Fatalf("control case: %v, upstream got %d", err, c.up.Count())
			}
			continue
		}
		se, ok := err.(*smtp.SMTPError)
		if !ok || !strings.Contains(se.Message, "failure="+c.class+":") || !strings.Contains(se.Message, "fix:") {
			t.Errorf("%s: got %v, want a reply naming failure=%s and a fix", c.domain, err, c.class)
			continue
		}
		for _, s := range c.says {
			if !strings.Contains(se.Message, s) {
				t.Errorf("%s: reply lacks %q: %s", c.domain, s, se.Message)
			}
		}
		if c.up.Count() != 0 {
			t.Errorf("%s: upstream received %d messages", c.domain, c.up.Count())
		}
		if !strings.Contains(tr.logs.String(), "failure="+c.class) {
			t.Errorf("%s: no log line with failure=%s", c.domain, c.class)
		}
	}
	logs := tr.logs.String()
	for _, secret := range append(ep.IssuedTokens(), "good-secret", "not-the-secret") {
		if strings.Contains(logs, secret) {
			t.Errorf("a token or secret is in the log: %s...", secret[:4])
		}
	}
}

// TestEveryMXClassIsNamed covers the classes of delivery to mail
// exchangers (upstream = "mx") end to end, each in the reply, with its
// fix, and in the log beside its TLS-RPT result type where it has one.
// requiretls is covered by TestREQUIRETLS and TestMXREQUIRETLS; the TLS
// classes that verify shares with other destinations by TestMXSTS.
func TestEveryMXClassIsNamed(t *testing.T) {
	w := newMXWorld(t)
	w.DNS.Zone("signed.test", true)
	other, _ := certgen.NewCA("Other")
	wrong, _ := other.Issue(certgen.Options{DNSNames: []string{"x"}})
	w.Host("mx.mismatch.signed.test", sink.Options{})
	w.Host("mx.unusable.signed.test", sink.Options{})
	w.Host("mx.servfail.signed.test", sink.Options{})
	w.Host("mx.sts.test", sink.Options{})
	w.DNS.MustAdd(
		"mismatch.signed.test. MX 10 mx.mismatch.signed.test.", tlsa("mx.mismatch.signed.test", policy.TLSAFor(3, wrong.Cert)),
		"unusable.signed.test. MX 10 mx.unusable.signed.test.", tlsa("mx.unusable.signed.test", policy.TLSAFor(0, wrong.Cert)),
		"servfail.signed.test. MX 10 mx.servfail.signed.test.",
		"sts.test. MX 10 mx.sts.test.",
		"null.test. MX 0 .")
	w.DNS.Fail("_25._tcp.mx.servfail.signed.test", 52, 2)
	w.STS("sts.test", "1", mxtest.Policy("enforce", 86400, "elsewhere.sts.test"))
	tr := w.relay(`on_failure = "reject"`)
	for _, c := range []struct {
		rcpt, class, rpt string
		code             int
	}{
		{"a@mismatch.signed.test", "dane_mismatch", "validation-failure", 554},
		{"a@unusable.signed.test", "dane_unusable", "tlsa-invalid", 554},
		{"a@servfail.signed.test", "dns", "dnssec-invalid", 451},
		{"a@sts.test", "mx_security", "validation-failure", 554},
		{"a@null.test", "null_mx", "", 556},
		{"a@nowhere.test", "no_such_domain", "", 550},
	} {
		err := replyOf(tr, c.rcpt)
		se, ok := err.(*smtp.SMTPError)
		if !ok || se.Code != c.code || !strings.Contains(se.Message, "="+c.class+":") || !strings.Contains(se.Message, "fix:") {
			t.Errorf("%s: got %v, want %d naming %s with a fix", c.rcpt, err, c.code, c.class)
		}
		logs := tr.logs.String()
		if !strings.Contains(logs, "failure="+c.class) {
			t.Errorf("%s: no log line with failure=%s", c.rcpt, c.class)
		}
		if c.rpt != "" && !strings.Contains(logs, "tlsrpt_result="+c.rpt) {
			t.Errorf("%s: no log line with tlsrpt_result=%s", c.rcpt, c.rpt)
		}
	}
}
