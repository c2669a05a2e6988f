package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/oauth"
	"tlsrelay/relay/oauth/oauthtest"
	"tlsrelay/relay/sink"
)

// oauthE2E is a token endpoint and an OAuth upstream for the end-to-end
// tests: the upstream (STARTTLS only) accepts only the tokens the
// endpoint issued for the mailbox, while they are valid.
type oauthE2E struct {
	fx  *upstreamFixture
	ep  *oauthtest.Server
	up  *sink.Sink
	dir string
}

func newOAuthE2E(t *testing.T, o sink.OAuthOptions) *oauthE2E {
	t.Helper()
	e := &oauthE2E{fx: newUpstreamFixture(t), dir: t.TempDir()}
	var err error
	if e.ep, err = oauthtest.Start(e.dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ep.Close() })
	o.Valid = e.ep.Valid
	if e.up, err = sink.Start(sink.Options{Cert: e.fx.leaf.TLSCertificate(), OAuth: &o}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.up.Close() })
	return e
}

// config renders a relay configuration whose destinations are each given
// by a domain and the lines of its [destination.oauth] table. Upstream
// connections are not reused, so every message logs in anew.
func (e *oauthE2E) config(t *testing.T, spool string, dests ...[2]string) string {
	t.Helper()
	cfg := fmt.Sprintf(`
[server]
listen = "127.0.0.1:0"
hostname = "relay.e2e.test"
[queue]
dir = %q
retry_min = "100ms"
retry_max = "300ms"
upstream_idle_timeout = "0s"
[log]
format = "json"
[metrics]
listen = "127.0.0.1:0"
`, spool)
	for _, d := range dests {
		cfg += fmt.Sprintf(`
[[destination]]
domains = [%q]
upstream = %q
ca_file = %q
server_name = "mx.e2e.test"
require_hostname = ["mx.e2e.test"]
[destination.oauth]
token_url = %q
device_auth_url = %q
auth_url = %q
ca_file = %q
%s
`, d[0], e.up.Addr(), e.fx.caFile, e.ep.TokenURL(), e.ep.DeviceAuthURL(), e.ep.AuthURL(), e.ep.CAFile, d[1])
	}
	path := filepath.Join(e.dir, "tlsrelay.toml")
	writeConfigFile(t, path, cfg)
	return path
}

// noSecretsIn fails if any token the endpoint issued, or a secret, is in text.
func (e *oauthE2E) noSecretsIn(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range append(e.ep.IssuedTokens(), secrets...) {
		if strings.Contains(text, s) {
			t.Errorf("%s contains a token or secret (%s...)", what, s[:5])
		}
	}
}

const (
	ccTable = `flow = "client_credentials"
mailbox = "app@cc.test"
client_id = "cc-app"
client_secret_env = "E2E_CC_SECRET"
scopes = ["https://outlook.office365.com/.default"]`
	rtTable = `flow = "refresh_token"
mailbox = "user@example.test"
client_id = "public-app"
scopes = ["https://outlook.office.com/SMTP.Send", "offline_access"]
refresh_token_file = %q`
)

func TestOAuthDeliversWithEachFlowAndRenewsExpiredTokens(t *testing.T) {
	e := newOAuthE2E(t, sink.OAuthOptions{})
	e.ep.SetLifetime(time.Second) // every token expires between the two rounds
	e.ep.AddClient("cc-app", "cc-secret-value", "app@cc.test")
	e.ep.AddClient("public-app", "")
	key, err := e.ep.ServiceAccount("relay@test.iam.gserviceaccount.com")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(e.dir, "sa.json")
	os.WriteFile(keyFile, key, 0o600)
	e.ep.Delegate("app@sa.test")
	rtFile := filepath.Join(e.dir, "rt.token")
	oauth.WriteRefreshToken(rtFile, e.ep.GrantRefreshToken("public-app", "user@example.test", "https://outlook.office.com/SMTP.Send offline_access"))

	cfg := e.config(t, t.TempDir(),
		[2]string{"cc.test", ccTable},
		[2]string{"sa.test", "flow = \"jwt_bearer\"\nmailbox = \"app@sa.test\"\nservice_account_file = \"" + keyFile + "\"\nscopes = [\"https://mail.google.com/\"]"},
		[2]string{"rt.test", fmt.Sprintf(rtTable, rtFile)})
	p := startBinary(t, cfg, "E2E_CC_SECRET=cc-secret-value")
	for round := 1; round <= 2; round++ {
		for _, dom := range []string{"cc.test", "sa.test", "rt.test"} {
			if err := plainSend(p.addr, "x@"+dom, "Subject: "+dom+"\r\n\r\nhi\r\n"); err != nil {
				t.Fatalf("round %d, %s: %v", round, dom, err)
			}
		}
		if !e.up.Wait(3*round, 10*time.Second) {
			t.Fatalf("round %d: %d messages arrived, want %d", round, e.up.Count(), 3*round)
		}
		if round == 1 {
			time.Sleep(1100 * time.Millisecond)
		}
	}
	users := map[string]int{}
	for _, m := range e.up.Messages() {
		users[m.User]++
	}
	if users["app@cc.test"] != 2 || users["app@sa.test"] != 2 || users["user@example.test"] != 2 {
		t.Errorf("logins: %v", users)
	}
	for _, g := range []string{"client_credentials", "jwt_bearer", "refresh_token"} {
		if n := e.ep.Requests(g); n != 2 {
			t.Errorf("%s: %d token requests, want 2 (one per expired token)", g, n)
		}
	}
	if strings.Contains(p.log(), "delivery attempt failed") || e.up.RefusedTokens() != 0 {
		t.Errorf("an expired token was used: %d refused by the upstream", e.up.RefusedTokens())
	}
	_, metrics := httpGet(t, "http://"+p.metricsAddr(t)+"/metrics")
	for _, want := range []string{`tlsrelay_oauth_token_requests_total{destination="cc.test",result="success"} 2`, `tlsrelay_oauth_token_expiry_seconds{destination="rt.test"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	st := exec.Command(binary, "oauth", "status", "-config", cfg)
	st.Env = append(os.Environ(), "E2E_CC_SECRET=cc-secret-value")
	out, err := st.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "jwt_bearer") || !regexp.MustCompile(`last error:\s+none`).MatchString(string(out)) || !strings.Contains(string(out), "rt.token, saved") {
		t.Errorf("oauth status: %v\n%s", err, out)
	}
	e.noSecretsIn(t, "the log", p.log()+string(out)+metrics, "cc-secret-value")
}

// TestOAuthRotatedRefreshTokenSurvivesKill9: the provider rotates the
// refresh token at every use and revokes the old one; the relay must have
// the new one on disk before it uses the access token, so a relay killed
// right after a delivery still has a working grant when it starts again.
func TestOAuthRotatedRefreshTokenSurvivesKill9(t *testing.T) {
	e := newOAuthE2E(t, sink.OAuthOptions{})
	e.ep.AddClient("public-app", "")
	rtFile := filepath.Join(e.dir, "rt.token")
	first := e.ep.GrantRefreshToken("public-app", "user@example.test", "https://outlook.office.com/SMTP.Send offline_access")
	oauth.WriteRefreshToken(rtFile, first)
	spool := t.TempDir()
	cfg := e.config(t, spool, [2]string{"rt.test", fmt.Sprintf(rtTable, rtFile)})
	p := startBinary(t, cfg)
	if err := plainSend(p.addr, "u@rt.test", "Subject: 1\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	if !e.up.Wait(1, 10*time.Second) {
		t.Fatal("first message not delivered")
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	saved, err := oauth.ReadRefreshToken(rtFile)
	if err != nil || saved == first || e.ep.RefreshTokenValid(first) || !e.ep.RefreshTokenValid(saved) {
		t.Fatalf("after kill -9 the file holds a token that is the first: %v, valid: %v (err %v)", saved == first, e.ep.RefreshTokenValid(saved), err)
	}
	p = startBinary(t, cfg)
	if err := plainSend(p.addr, "u@rt.test", "Subject: 2\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	if !e.up.Wait(2, 10*time.Second) {
		t.Fatalf("after restart the message was not delivered:\n%s", p.log())
	}
	e.noSecretsIn(t, "the log", p.log())
}

// TestOAuthFailuresAreExplainedAndMailWaits: a wrong client secret is an
// oauth_token failure with Entra's code and the fix, and the mail stays
// queued; a mailbox with SMTP AUTH disabled is an auth failure naming the
// setting; `check -auth` says the same and never sends MAIL.
func TestOAuthFailuresAreExplainedAndMailWaits(t *testing.T) {
	e := newOAuthE2E(t, sink.OAuthOptions{Immediate: true, After: func(mb string) *smtp.SMTPError {
		if mb == "off@cc.test" {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."}
		}
		return nil
	}})
	e.ep.AddClient("cc-app", "the-right-secret", "app@cc.test", "off@cc.test")
	spool := t.TempDir()
	cfg := e.config(t, spool,
		[2]string{"cc.test", ccTable},
		[2]string{"off.test", strings.Replace(ccTable, "app@cc.test", "off@cc.test", 1)})
	env := "E2E_CC_SECRET=a-wrong-secret"
	p := startBinary(t, cfg, env)
	if err := plainSend(p.addr, "u@cc.test", "Subject: 1\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, `"failure":"oauth_token"`)
	log := p.log()
	for _, want := range []string{"AADSTS7000215", "invalid_client", "create a new client secret"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	q := exec.Command(binary, "queue", "-config", cfg, "list")
	q.Env = append(os.Environ(), env)
	out, err := q.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "oauth_token") || !strings.Contains(string(out), "in 1 message,") {
		t.Errorf("queue list: %v\n%s", err, out)
	}
	if e.up.Count() != 0 {
		t.Error("a message was delivered without a token")
	}
	e.noSecretsIn(t, "the log", log, "a-wrong-secret")
	p.cmd.Process.Kill()
	p.cmd.Wait()

	// With the right secret: the mailbox with SMTP AUTH disabled gets the
	// exact setting, the other one delivers the mail that waited.
	env = "E2E_CC_SECRET=the-right-secret"
	p = startBinary(t, cfg, env)
	if !e.up.Wait(1, 10*time.Second) {
		t.Fatal("the queued message was not delivered once the secret was right")
	}
	if err := plainSend(p.addr, "u@off.test", "Subject: 2\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, `"failure":"auth"`)
	if !strings.Contains(p.log(), "Set-CASMailbox -Identity off@cc.test -SmtpClientAuthenticationDisabled $false") {
		t.Error("the auth failure does not name the setting")
	}
	e.noSecretsIn(t, "the log", p.log(), "the-right-secret")

	check := func(domain string) (string, int) {
		c := exec.Command(binary, "check", "-config", cfg, "-auth", domain)
		c.Env = append(os.Environ(), env)
		out, _ := c.CombinedOutput()
		return string(out), c.ProcessState.ExitCode()
	}
	before := e.up.Count()
	if out, code := check("cc.test"); code != 0 || !strings.Contains(out, "login:         ok as app@cc.test (OAuth client_credentials)") {
		t.Errorf("check -auth cc.test: exit %d\n%s", code, out)
	}
	if out, code := check("off.test"); code != 4 || !strings.Contains(out, "FAIL failure=auth") || !strings.Contains(out, "Set-CASMailbox") {
		t.Errorf("check -auth off.test: exit %d\n%s", code, out)
	}
	if e.up.Count() != before {
		t.Error("check sent mail")
	}
}

func waitLog(t *testing.T, p *proc, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(p.log(), want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the log never said %s:\n%s", want, p.log())
}

// TestOAuthLogin runs `tlsrelay oauth login` against the test endpoints:
// the device code flow (the code is approved while the command polls) and
// the authorization code flow with PKCE (the "browser" follows the URL
// printed, and the endpoint's redirect lands on the command's loopback
// listener). Each ends with a working refresh token in the file.
func TestOAuthLogin(t *testing.T) {
	e := newOAuthE2E(t, sink.OAuthOptions{})
	e.ep.AddClient("public-app", "")
	devFile, webFile := filepath.Join(e.dir, "dev.token"), filepath.Join(e.dir, "web.token")
	cfg := e.config(t, t.TempDir(), [2]string{"dev.test", fmt.Sprintf(rtTable, devFile)}, [2]string{"web.test", fmt.Sprintf(rtTable, webFile)})

	login := func(dest, method string, act func(line string) bool) string {
		t.Helper()
		c := exec.Command(binary, "oauth", "login", "-config", cfg, "-method", method, "-timeout", "20s", dest)
		stdout, _ := c.StdoutPipe()
		var stderr strings.Builder
		c.Stderr = &stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		sc := bufio.NewScanner(stdout)
		acted := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !acted {
				acted = act(sc.Text())
			}
		}
		if err := c.Wait(); err != nil {
			t.Fatalf("oauth login %s: %v\n%s%s", dest, err, out.String(), stderr.String())
		}
		return out.String()
	}

	codeRE := regexp.MustCompile(`enter the code (\S+)`)
	out := login("dev.test", "device", func(line string) bool {
		if m := codeRE.FindStringSubmatch(line); m != nil {
			return e.ep.ApproveDevice(m[1], "user@example.test")
		}
		return false
	})
	if rt, err := oauth.ReadRefreshToken(devFile); err != nil || !e.ep.RefreshTokenValid(rt) {
		t.Errorf("device login saved no valid token (%v):\n%s", err, out)
	}

	pool := x509.NewCertPool()
	raw, _ := os.ReadFile(e.ep.CAFile)
	pool.AppendCertsFromPEM(raw)
	browser := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	var page string
	out = login("web.test", "browser", func(line string) bool {
		if !strings.HasPrefix(line, e.ep.AuthURL()+"?") {
			return false
		}
		if !strings.Contains(line, "code_challenge_method=S256") || !strings.Contains(line, "redirect_uri=http%3A%2F%2F127.0.0.1%3A") {
			t.Errorf("the URL lacks PKCE or a loopback redirect: %s", line)
		}
		resp, err := browser.Get(line)
		if err != nil {
			t.Errorf("browser: %v", err)
			return true
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page = string(b)
		return true
	})
	if !strings.Contains(page, "signed in") {
		t.Errorf("the loopback page said %q", page)
	}
	rt, err := oauth.ReadRefreshToken(webFile)
	if err != nil || !e.ep.RefreshTokenValid(rt) {
		t.Errorf("browser login saved no valid token (%v):\n%s", err, out)
	}
	if fi, err := os.Stat(webFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode: %v %v", fi.Mode(), err)
	}
	e.noSecretsIn(t, "the output", out)
}
