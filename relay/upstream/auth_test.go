package upstream

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/oauth"
	"tlsrelay/relay/oauth/oauthtest"
	"tlsrelay/relay/sink"
)

func TestXOAuth2InitialResponseIsByteExact(t *testing.T) {
	m := &xoauth2Client{user: "someuser@example.com", token: "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"}
	name, ir, err := m.Start()
	if err != nil || name != "XOAUTH2" {
		t.Fatalf("Start: %q %v", name, err)
	}
	// The published example (Google's XOAUTH2 protocol page), base64 of
	// "user=someuser@example.com^Aauth=Bearer ya29...^A^A".
	const want = "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
	if got := base64.StdEncoding.EncodeToString(ir); got != want {
		t.Errorf("initial response\n got %s\nwant %s", got, want)
	}
	resp, err := m.Next([]byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`))
	if err != nil || len(resp) != 0 {
		t.Errorf("answer to the error challenge: %q %v, want an empty response", resp, err)
	}
	if m.refused == nil || m.refused.Status != "401" || m.refused.Scope != "https://mail.google.com/" {
		t.Errorf("error challenge decoded as %+v", m.refused)
	}
}

func TestOAuthBearerFollowsRFC7628(t *testing.T) {
	m := &oauthBearerClient{user: "user@example.com", host: "server.example.com", port: 587, token: "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="}
	_, ir, _ := m.Start()
	// RFC 7628, 4.1, with the authzid of the user.
	want := "n,a=user@example.com,\x01host=server.example.com\x01port=587\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
	if string(ir) != want {
		t.Errorf("initial response %q, want %q", ir, want)
	}
	resp, err := m.Next([]byte(`{"status":"invalid_token"}`))
	if err != nil || string(resp) != "\x01" {
		t.Errorf("answer to the error challenge: %q %v, want a single 0x01", resp, err)
	}
}

// oauthFixture is a token endpoint and an SMTP upstream (STARTTLS) that
// accepts only the tokens the endpoint issued.
type oauthFixture struct {
	ep     *oauthtest.Server
	up     *sink.Sink
	caFile string
	tokens *oauth.Registry
}

func newOAuthFixture(t *testing.T, o sink.OAuthOptions) *oauthFixture {
	t.Helper()
	ep, err := oauthtest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	caFile, cert := serverCert(t, "mx.example.test")
	o.Valid = ep.Valid
	up, err := sink.Start(sink.Options{Cert: cert, OAuth: &o})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	return &oauthFixture{ep: ep, up: up, caFile: caFile, tokens: oauth.NewRegistry("")}
}

// dest compiles a client-credentials destination for the fixture.
func (f *oauthFixture) dest(t *testing.T, secretEnv string, extra func(*policy.Spec)) *policy.Destination {
	t.Helper()
	s := policy.Spec{Domains: []string{"example.test"}, Upstream: f.up.Addr(), CAFile: f.caFile,
		ServerName: "mx.example.test", RequireHostname: []string{"mx.example.test"},
		OAuth: &policy.OAuthSpec{Flow: "client_credentials", Mailbox: "app@example.test", ClientID: "app-1",
			ClientSecretEnv: secretEnv, TokenURL: f.ep.TokenURL(), Scopes: []string{"https://outlook.office365.com/.default"}, CAFile: f.ep.CAFile}}
	if extra != nil {
		extra(&s)
	}
	d, err := policy.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (f *oauthFixture) dial(d *policy.Destination) (*Conn, error) {
	return (&Dialer{LocalName: "relay.test", Timeout: 5e9, Tokens: f.tokens}).Dial(context.Background(), d)
}

func TestOAuthLoginWithEachMechanism(t *testing.T) {
	for _, style := range []struct {
		name string
		opts sink.OAuthOptions
	}{{"gmail", sink.OAuthOptions{}}, {"exchange", sink.OAuthOptions{Immediate: true}}} {
		for _, mech := range []string{"auto", "xoauth2", "oauthbearer"} {
			t.Run(style.name+"/"+mech, func(t *testing.T) {
				f := newOAuthFixture(t, style.opts)
				f.ep.AddClient("app-1", "s3cret", "app@example.test")
				t.Setenv("CC_SECRET", "s3cret")
				d := f.dest(t, "CC_SECRET", func(s *policy.Spec) { s.AuthMechanism = mech })
				c, err := f.dial(d)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				res, err := c.Send(context.Background(), "app@example.test", []string{"a@example.test"}, body("Subject: x\r\n\r\nx\r\n"), false)
				c.Close()
				if err != nil {
					t.Fatalf("send: %v %+v", err, res)
				}
				if m := f.up.Messages(); len(m) != 1 || m[0].User != "app@example.test" {
					t.Fatalf("upstream got %+v", m)
				}
			})
		}
	}
}

// TestOAuthRefusedTokenEndsCleanly: a token the upstream does not accept
// ends in the upstream's final reply, Gmail's way (334 JSON, the client's
// answer, 535) and Exchange's (535 at once), for both mechanisms; the
// sink replies 501 instead if the client answered the challenge wrongly.
func TestOAuthRefusedTokenEndsCleanly(t *testing.T) {
	for _, c := range []struct {
		name, mech string
		opts       sink.OAuthOptions
		want       []string
	}{
		{"gmail xoauth2", "xoauth2", sink.OAuthOptions{}, []string{"535 5.7.8", "status 401", "scope https://mail.google.com/"}},
		{"gmail oauthbearer", "oauthbearer", sink.OAuthOptions{}, []string{"535 5.7.8", "status 401"}},
		{"exchange xoauth2", "xoauth2", sink.OAuthOptions{Immediate: true, Refusal: &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}},
			[]string{"535 5.7.3 Authentication unsuccessful", "SMTP.SendAsApp", "New-ServicePrincipal", "Add-MailboxPermission"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newOAuthFixture(t, c.opts)
			f.ep.AddClient("app-1", "s3cret") // no mailbox permission: tokens are refused
			t.Setenv("CC_SECRET", "s3cret")
			d := f.dest(t, "CC_SECRET", func(s *policy.Spec) { s.AuthMechanism = c.mech })
			_, err := f.dial(d)
			fl, ok := policy.AsFailure(err)
			if !ok || fl.Class != policy.Auth {
				t.Fatalf("got %v, want an auth failure", err)
			}
			text := fl.Detail + " fix: " + fl.Fix
			for _, w := range c.want {
				if !strings.Contains(text, w) {
					t.Errorf("diagnosis lacks %q: %s", w, text)
				}
			}
			if strings.Contains(text, "501") {
				t.Errorf("the sink saw a wrong answer to its challenge: %s", text)
			}
		})
	}
}

func TestOAuthDisabledSMTPAuthNamesTheSetting(t *testing.T) {
	f := newOAuthFixture(t, sink.OAuthOptions{Immediate: true, After: func(string) *smtp.SMTPError {
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}
	}})
	f.ep.AddClient("app-1", "s3cret", "app@example.test")
	t.Setenv("CC_SECRET", "s3cret")
	_, err := f.dial(f.dest(t, "CC_SECRET", nil))
	fl, ok := policy.AsFailure(err)
	if !ok || fl.Class != policy.Auth || !strings.Contains(fl.Fix, "Set-CASMailbox -Identity app@example.test -SmtpClientAuthenticationDisabled $false") {
		t.Fatalf("got %v", err)
	}
}

func TestOAuthWrongSecretIsAnOAuthTokenFailure(t *testing.T) {
	f := newOAuthFixture(t, sink.OAuthOptions{})
	f.ep.AddClient("app-1", "right", "app@example.test")
	t.Setenv("CC_SECRET", "wrong-secret-value")
	_, err := f.dial(f.dest(t, "CC_SECRET", nil))
	fl, ok := policy.AsFailure(err)
	if !ok || fl.Class != policy.OAuthToken {
		t.Fatalf("got %v, want oauth_token", err)
	}
	if !strings.Contains(fl.Detail, "AADSTS7000215") || !strings.Contains(fl.Fix, "create a new client secret") {
		t.Errorf("diagnosis: %s; fix: %s", fl.Detail, fl.Fix)
	}
	if strings.Contains(fl.Error(), "wrong-secret-value") {
		t.Error("the secret is in the error text")
	}
	if n := f.ep.Requests("client_credentials") + f.ep.Requests("basic_auth"); n != 1 {
		t.Errorf("%d token requests, want 1 (the secret goes in the body, never twice)", n)
	}
}

// TestOAuthRevokedCachedTokenIsReplaced: the upstream refuses a cached
// token; the relay drops it, fetches one more and logs in with that.
func TestOAuthRevokedCachedTokenIsReplaced(t *testing.T) {
	f := newOAuthFixture(t, sink.OAuthOptions{})
	f.ep.AddClient("app-1", "s3cret", "app@example.test")
	t.Setenv("CC_SECRET", "s3cret")
	d := f.dest(t, "CC_SECRET", nil)
	c, err := f.dial(d)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, tok := range f.ep.IssuedTokens() {
		f.ep.Revoke(tok)
	}
	c, err = f.dial(d)
	if err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	c.Close()
	if n := f.ep.Requests("client_credentials"); n != 2 {
		t.Errorf("%d token requests, want 2", n)
	}
}
