package oauth

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/oauth/oauthtest"
)

func startEndpoint(t *testing.T) *oauthtest.Server {
	t.Helper()
	ep, err := oauthtest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	return ep
}

// compile builds the OAuth part of a destination from spec.
func compile(t *testing.T, o *policy.OAuthSpec) *policy.OAuth {
	t.Helper()
	d, err := policy.Compile(policy.Spec{Domains: []string{"example.test"}, Upstream: "127.0.0.1:1", OAuth: o})
	if err != nil {
		t.Fatal(err)
	}
	return d.OAuth
}

func clientCredentials(t *testing.T, ep *oauthtest.Server, secret string) *policy.OAuth {
	t.Setenv("TEST_SECRET", secret)
	return compile(t, &policy.OAuthSpec{Flow: "client_credentials", Mailbox: "app@example.test", ClientID: "app-1",
		ClientSecretEnv: "TEST_SECRET", TokenURL: ep.TokenURL(), Scopes: []string{"https://outlook.office365.com/.default"}, CAFile: ep.CAFile})
}

func TestSourceSharesOneRequestAndCaches(t *testing.T) {
	ep := startEndpoint(t)
	ep.AddClient("app-1", "s3cret", "app@example.test")
	src := NewSource("example.test", clientCredentials(t, ep, "s3cret"))
	var wg sync.WaitGroup
	toks := make([]Token, 20)
	for i := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := src.Token(context.Background())
			if err != nil {
				t.Error(err)
			}
			toks[i] = tok
		}()
	}
	wg.Wait()
	if n := ep.Requests("client_credentials"); n != 1 {
		t.Errorf("%d token requests for 20 concurrent callers, want 1", n)
	}
	for _, tk := range toks {
		if tk.Value != toks[0].Value || !ep.Valid("app@example.test", tk.Value.Reveal()) {
			t.Fatalf("tokens differ or are invalid")
		}
	}
	if tok, _ := src.Token(context.Background()); tok.Fresh || ep.Requests("client_credentials") != 1 {
		t.Error("a valid cached token was not reused")
	}
	src.Invalidate(toks[0].Value)
	if tok, _ := src.Token(context.Background()); !tok.Fresh || tok.Value == toks[0].Value {
		t.Error("an invalidated token was reused")
	}
}

func TestSourceRenewsAheadOfExpiry(t *testing.T) {
	ep := startEndpoint(t)
	ep.AddClient("app-1", "s3cret", "app@example.test")
	ep.SetLifetime(time.Hour)
	src := NewSource("example.test", clientCredentials(t, ep, "s3cret"))
	now := time.Now()
	src.now = func() time.Time { return now }
	first, err := src.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(50 * time.Minute) // 10 minutes left: not yet due
	if tok, _ := src.Token(context.Background()); tok.Value != first.Value {
		t.Error("renewed too early")
	}
	now = now.Add(6 * time.Minute) // 4 minutes left: due
	if tok, _ := src.Token(context.Background()); tok.Value == first.Value || !tok.Fresh {
		t.Error("not renewed 4 minutes before expiry")
	}
}

func TestRefreshTokenRotationIsSavedBeforeUse(t *testing.T) {
	ep := startEndpoint(t)
	ep.AddClient("public-1", "")
	dir := t.TempDir()
	file := filepath.Join(dir, "rt")
	rt0 := ep.GrantRefreshToken("public-1", "user@example.test", "https://outlook.office.com/SMTP.Send offline_access")
	if err := WriteRefreshToken(file, rt0); err != nil {
		t.Fatal(err)
	}
	cfg := compile(t, &policy.OAuthSpec{Flow: "refresh_token", Mailbox: "user@example.test", ClientID: "public-1",
		TokenURL: ep.TokenURL(), Scopes: []string{"https://outlook.office.com/SMTP.Send", "offline_access"}, RefreshTokenFile: file, CAFile: ep.CAFile})
	src := NewSource("example.test", cfg)
	tok, err := src.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !ep.Valid("user@example.test", tok.Value.Reveal()) {
		t.Fatal("invalid access token")
	}
	rt1, err := ReadRefreshToken(file)
	if err != nil || rt1 == rt0 || !ep.RefreshTokenValid(rt1) || ep.RefreshTokenValid(rt0) {
		t.Fatalf("file holds %q (err %v); want the rotated, valid token", rt1, err)
	}
	fi, _ := os.Stat(file)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A new source (a restart) redeems the saved token.
	src2 := NewSource("example.test", cfg)
	if _, err := src2.Token(context.Background()); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	// A revoked grant: invalid_grant, and the fix is to log in again.
	WriteRefreshToken(file, "rt-revoked")
	_, err = NewSource("example.test", cfg).Token(context.Background())
	e, ok := err.(*Error)
	if !ok || e.Code != "invalid_grant" || !strings.Contains(e.Fix(), "tlsrelay oauth login") || !e.HasAADSTS(70008) {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(e.Error(), "rt-revoked") {
		t.Error("the refresh token is in the error text")
	}
	os.Remove(file)
	_, err = NewSource("example.test", cfg).Token(context.Background())
	if e, ok := err.(*Error); !ok || !e.NoRefreshToken || !strings.Contains(e.Fix(), "oauth login") {
		t.Fatalf("without a file: %v", err)
	}
}

func TestJWTBearerForAServiceAccount(t *testing.T) {
	ep := startEndpoint(t)
	key, err := ep.ServiceAccount("relay@project.iam.gserviceaccount.com")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "sa.json")
	os.WriteFile(keyFile, key, 0o600)
	cfg := compile(t, &policy.OAuthSpec{Flow: "jwt_bearer", Mailbox: "user@example.test", ServiceAccountFile: keyFile,
		Scopes: []string{"https://mail.google.com/"}, CAFile: ep.CAFile})
	if cfg.TokenURL != ep.TokenURL() {
		t.Errorf("token_url %q, want the key file's token_uri", cfg.TokenURL)
	}
	_, err = NewSource("example.test", cfg).Token(context.Background())
	e, ok := err.(*Error)
	if !ok || e.Code != "unauthorized_client" || !strings.Contains(e.Fix(), "Domain-wide delegation") {
		t.Fatalf("without delegation: %v", err)
	}
	ep.Delegate("user@example.test")
	tok, err := NewSource("example.test", cfg).Token(context.Background())
	if err != nil || !ep.Valid("user@example.test", tok.Value.Reveal()) {
		t.Fatalf("with delegation: %v", err)
	}
}

func TestTokenEndpointIsVerified(t *testing.T) {
	ep := startEndpoint(t)
	ep.AddClient("app-1", "s3cret", "app@example.test")
	cfg := clientCredentials(t, ep, "s3cret")
	cfg.Roots = nil // the system roots do not know the test CA
	_, err := NewSource("example.test", cfg).Token(context.Background())
	e, ok := err.(*Error)
	if !ok || !e.Unreachable || !strings.Contains(e.Fix(), "ca_file") {
		t.Fatalf("got %v", err)
	}
}

func TestClientCredentialsWithACertificate(t *testing.T) {
	ep := startEndpoint(t)
	ca, err := certgen.NewCA("App Cert CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := func(name string) (string, string, *x509.Certificate) {
		iss, err := ca.Issue(certgen.Options{CommonName: name, RSABits: 2048})
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		certgen.WriteCertFile(certFile, iss.Cert)
		k, _ := certgen.KeyPEM(iss.Key)
		os.WriteFile(keyFile, k, 0o600)
		return certFile, keyFile, iss.Cert
	}
	certFile, keyFile, cert := files("registered")
	otherCert, otherKey, _ := files("other")
	ep.AddCertClient("cert-app", cert, "app@example.test")
	spec := func(c, k string) *policy.OAuth {
		return compile(t, &policy.OAuthSpec{Flow: "client_credentials", Mailbox: "app@example.test", ClientID: "cert-app",
			ClientCertFile: c, ClientKeyFile: k, TokenURL: ep.TokenURL(), Scopes: []string{"https://outlook.office365.com/.default"}, CAFile: ep.CAFile})
	}
	cfg := spec(certFile, keyFile)
	if s := fmt.Sprintf("%v %+v", cfg.ClientCert, cfg); strings.Contains(s, cfg.ClientCert.Key().D.String()) {
		t.Error("printing the configuration shows the private key")
	}
	src := NewSource("example.test", cfg)
	for i := 0; i < 2; i++ { // a new assertion (jti) each time
		tok, err := src.Token(context.Background())
		if err != nil || !ep.Valid("app@example.test", tok.Value.Reveal()) {
			t.Fatalf("request %d: %v", i, err)
		}
		src.Invalidate(tok.Value)
	}
	_, err = NewSource("example.test", spec(otherCert, otherKey)).Token(context.Background())
	e, ok := err.(*Error)
	if !ok || !e.HasAADSTS(700027) || !strings.Contains(e.Fix(), "upload the certificate") {
		t.Fatalf("an unregistered certificate: %v", err)
	}
}

// TestRegistryKeepsSourcesAcrossReloads: a reload that leaves a
// destination's OAuth settings alone keeps its cached token; a new secret
// gets a new source; the status file never holds a token.
func TestRegistryKeepsSourcesAcrossReloads(t *testing.T) {
	ep := startEndpoint(t)
	ep.AddClient("app-1", "s3cret", "app@example.test")
	statusFile := filepath.Join(t.TempDir(), "oauth-status.json")
	reg := NewRegistry(statusFile)
	var results []string
	reg.Observe = func(dest, result string) { results = append(results, dest+"="+result) }
	load := func(secret string) *policy.Destination {
		t.Setenv("TEST_SECRET", secret)
		d, err := policy.Compile(policy.Spec{Domains: []string{"example.test"}, Upstream: "127.0.0.1:1", OAuth: &policy.OAuthSpec{
			Flow: "client_credentials", Mailbox: "app@example.test", ClientID: "app-1", ClientSecretEnv: "TEST_SECRET",
			TokenURL: ep.TokenURL(), Scopes: []string{"https://outlook.office365.com/.default"}, CAFile: ep.CAFile}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	src := reg.Source(load("s3cret"))
	tok, err := src.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if reg.Source(load("s3cret")) != src {
		t.Error("an unchanged destination got a new source")
	}
	changed := reg.Source(load("wrong"))
	if changed == src {
		t.Fatal("a changed secret kept the old source")
	}
	changed.Token(context.Background())
	raw, err := os.ReadFile(statusFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), tok.Value.Reveal()) || strings.Contains(string(raw), "s3cret") || !strings.Contains(string(raw), "AADSTS7000215") {
		t.Errorf("status file:\n%s", raw)
	}
	if fmt.Sprint(results) != "[example.test=success example.test=invalid_client]" {
		t.Errorf("observed %v", results)
	}
	if exp := reg.Expiries()["example.test"]; !exp.IsZero() {
		t.Errorf("the expiry of the current (failed) source is %v, want none", exp)
	}
}
