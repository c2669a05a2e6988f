// Package oauthtest is an OAuth 2.0 token endpoint for tests: a real
// HTTPS server on loopback, under a CA made for it, that implements the
// grants tlsrelay uses (client credentials, refresh token with rotation,
// the JWT bearer grant of Google service accounts, the device code flow
// and the authorization code flow with PKCE) and answers refusals the
// way Microsoft Entra ID and Google do. The SMTP side of the tests (the
// sink) asks it whether a token it issued is valid.
package oauthtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2/jws"

	"tlsrelay/policy/certgen"
)

// Server is a running token endpoint.
type Server struct {
	// URL is the base URL (https://127.0.0.1:port).
	URL string
	// CAFile is a PEM file with the CA its certificate is issued by.
	CAFile string

	srv *http.Server
	ln  net.Listener

	mu sync.Mutex
	// Lifetime of the access tokens issued from now on.
	lifetime time.Duration
	clients  map[string]*app
	accounts map[string]*account
	tokens   map[string]*issued
	refresh  map[string]refreshGrant
	devices  map[string]*device // by device code
	codes    map[string]*authCode
	// delegated lists the mailboxes a service account may impersonate.
	delegated map[string]bool
	requests  map[string]int // by grant type
	// Rotate, when set, gives a new refresh token at every refresh.
	rotate bool
	jtis   map[string]bool // client assertions seen
}

type app struct {
	secret string // "" for a public client
	// cert, if set, is the certificate credential: the client proves
	// itself with an assertion signed by its key.
	cert *x509.Certificate
	// mailboxes its app-only tokens may log in to (Add-MailboxPermission).
	mailboxes []string
}

type account struct {
	email string
	pub   *rsa.PublicKey
}

type issued struct {
	app     string // the client of an app-only token
	mailbox string
	scope   string
	expiry  time.Time
}

type refreshGrant struct {
	client, mailbox, scope string
}

type device struct {
	client, userCode, scope string
	approved                string // the mailbox that approved, "" while pending
	expiry                  time.Time
}

type authCode struct {
	client, redirect, challenge, scope, mailbox string
}

// Start runs a token endpoint on 127.0.0.1 with a certificate for
// 127.0.0.1 from a fresh CA, written to a file in dir.
func Start(dir string) (*Server, error) {
	ca, err := certgen.NewCA("OAuth Test CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue(certgen.Options{CommonName: "127.0.0.1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "oauth-ca.pem")
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{CAFile: caFile, ln: ln, URL: "https://" + ln.Addr().String(), lifetime: time.Hour, rotate: true,
		clients: map[string]*app{}, accounts: map[string]*account{}, tokens: map[string]*issued{},
		refresh: map[string]refreshGrant{}, devices: map[string]*device{}, codes: map[string]*authCode{},
		delegated: map[string]bool{}, requests: map[string]int{}, jtis: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", s.token)
	mux.HandleFunc("/devicecode", s.deviceCode)
	mux.HandleFunc("/authorize", s.authorize)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}}
	go s.srv.ServeTLS(ln, "", "")
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

// TokenURL, DeviceAuthURL and AuthURL are the endpoints.
func (s *Server) TokenURL() string      { return s.URL + "/token" }
func (s *Server) DeviceAuthURL() string { return s.URL + "/devicecode" }
func (s *Server) AuthURL() string       { return s.URL + "/authorize" }

// AddClient registers an application (secret "" for a public client)
// whose app-only tokens may log in to mailboxes.
func (s *Server) AddClient(id, secret string, mailboxes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = &app{secret: secret, mailboxes: mailboxes}
}

// AddCertClient registers an application whose credential is a
// certificate (Entra's certificate credential): token requests must carry
// a client assertion signed by its key.
func (s *Server) AddCertClient(id string, cert *x509.Certificate, mailboxes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = &app{cert: cert, mailboxes: mailboxes}
}

// SetLifetime sets the lifetime of the access tokens issued from now on.
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// GrantRefreshToken creates a refresh token for client and mailbox, as a
// login would.
func (s *Server) GrantRefreshToken(client, mailbox, scope string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := "rt-" + randHex(16)
	s.refresh[rt] = refreshGrant{client: client, mailbox: mailbox, scope: scope}
	return rt
}

// RefreshTokenValid reports whether rt can still be redeemed.
func (s *Server) RefreshTokenValid(rt string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.refresh[rt]
	return ok
}

// Delegate allows service accounts to impersonate mailbox.
func (s *Server) Delegate(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delegated[mailbox] = true
}

// Requests returns how many token requests of a grant type were made
// ("client_credentials", "refresh_token", "jwt_bearer", "device_code",
// "authorization_code"; "basic_auth" counts requests that sent the client
// secret in an Authorization header, which this endpoint refuses).
func (s *Server) Requests(grant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[grant]
}

// Valid reports whether token was issued here for mailbox and has not
// expired: what the test SMTP server accepts.
func (s *Server) Valid(mailbox, token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[token]
	if t == nil || !time.Now().Before(t.expiry) {
		return false
	}
	if t.app != "" {
		for _, mb := range s.clients[t.app].mailboxes {
			if strings.EqualFold(mb, mailbox) {
				return true
			}
		}
		return false
	}
	return strings.EqualFold(t.mailbox, mailbox)
}

// Revoke makes an issued access token invalid.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// IssuedTokens returns every access and refresh token handed out, so a
// test can check that none of them appears in a log.
func (s *Server) IssuedTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for t := range s.tokens {
		out = append(out, t)
	}
	for t := range s.refresh {
		out = append(out, t)
	}
	return out
}

// ServiceAccount creates a Google-style service account key and returns
// its JSON key file content (token_uri pointing at this server).
func (s *Server) ServiceAccount(email string) ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.accounts[email] = &account{email: email, pub: &key.PublicKey}
	s.mu.Unlock()
	return json.MarshalIndent(map[string]string{
		"type": "service_account", "project_id": "test", "private_key_id": randHex(8),
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": email, "client_id": "1000" + randHex(4), "token_uri": s.TokenURL(),
	}, "", "  ")
}

// ApproveDevice completes the user's side of the device flow for the
// user code shown, as mailbox.
func (s *Server) ApproveDevice(userCode, mailbox string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devices {
		if d.userCode == userCode {
			d.approved = mailbox
			return true
		}
	}
	return false
}

// LoginAs is the mailbox the authorize endpoint signs in as (the test's
// stand-in for a user at the browser).
var LoginAs = "user@example.test"

func (s *Server) deviceCode(w http.ResponseWriter, r *http.Request) {
	if r.ParseForm() != nil || r.Method != http.MethodPost {
		oauthError(w, 400, "invalid_request", "AADSTS900144: malformed request", nil)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	client := r.PostForm.Get("client_id")
	if _, ok := s.clients[client]; !ok {
		oauthError(w, 400, "unauthorized_client", "AADSTS700016: Application with identifier '"+client+"' was not found", []int{700016})
		return
	}
	dc := "dc-" + randHex(16)
	uc := strings.ToUpper(randHex(4))
	s.devices[dc] = &device{client: client, userCode: uc, scope: r.PostForm.Get("scope"), expiry: time.Now().Add(10 * time.Minute)}
	writeJSON(w, 200, map[string]any{"device_code": dc, "user_code": uc, "verification_uri": s.URL + "/devicelogin",
		"expires_in": 600, "interval": 1, "message": "To sign in, open " + s.URL + "/devicelogin and enter the code " + uc})
}

// authorize plays the user's browser session: it signs in as LoginAs at
// once and redirects to redirect_uri with a code bound to the PKCE
// challenge.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.clients[q.Get("client_id")]; !ok {
		http.Error(w, "unknown client", 400)
		return
	}
	ru, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || ru.Scheme != "http" || (ru.Hostname() != "127.0.0.1" && ru.Hostname() != "localhost") {
		http.Error(w, "redirect_uri must be a loopback address", 400)
		return
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("response_type") != "code" {
		http.Error(w, "PKCE S256 and response_type=code are required", 400)
		return
	}
	code := "code-" + randHex(16)
	s.codes[code] = &authCode{client: q.Get("client_id"), redirect: q.Get("redirect_uri"), challenge: q.Get("code_challenge"),
		scope: q.Get("scope"), mailbox: LoginAs}
	v := ru.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	ru.RawQuery = v.Encode()
	http.Redirect(w, r, ru.String(), http.StatusFound)
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthError(w, 400, "invalid_request", "AADSTS900144: the request body must contain grant_type", nil)
		return
	}
	f := r.PostForm
	s.mu.Lock()
	defer s.mu.Unlock()
	grant := f.Get("grant_type")
	if _, _, basic := r.BasicAuth(); basic {
		// Microsoft wants the secret in the body; the relay must send it there.
		s.requests["basic_auth"]++
		oauthError(w, 401, "invalid_client", "AADSTS7000215: Invalid client secret provided (sent in an Authorization header)", []int{7000215})
		return
	}
	switch grant {
	case "client_credentials":
		s.requests["client_credentials"]++
		if !s.clientOK(w, f) {
			return
		}
		if f.Get("scope") != "https://outlook.office365.com/.default" && !strings.HasSuffix(f.Get("scope"), "/.default") {
			oauthError(w, 400, "invalid_scope", "AADSTS1002012: The provided value for scope "+f.Get("scope")+" is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier", []int{1002012})
			return
		}
		s.issueFor(w, f.Get("client_id"), "", f.Get("scope"), "")
	case "refresh_token":
		s.requests["refresh_token"]++
		if !s.clientOK(w, f) {
			return
		}
		g, ok := s.refresh[f.Get("refresh_token")]
		if !ok || g.client != f.Get("client_id") {
			oauthError(w, 400, "invalid_grant", "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.", []int{70008})
			return
		}
		rt := ""
		if s.rotate {
			delete(s.refresh, f.Get("refresh_token"))
			rt = "rt-" + randHex(16)
			s.refresh[rt] = g
		}
		s.issue(w, g.mailbox, g.scope, rt)
	case "urn:ietf:params:oauth:grant-type:jwt-bearer":
		s.requests["jwt_bearer"]++
		s.jwtBearer(w, f.Get("assertion"))
	case "urn:ietf:params:oauth:grant-type:device_code":
		s.requests["device_code"]++
		d := s.devices[f.Get("device_code")]
		switch {
		case d == nil || d.client != f.Get("client_id"):
			oauthError(w, 400, "invalid_grant", "AADSTS70000: unknown device code", []int{70000})
		case time.Now().After(d.expiry):
			oauthError(w, 400, "expired_token", "AADSTS70020: The provided value for the input parameter 'device_code' is not valid. This device code has expired.", []int{70020})
		case d.approved == "":
			oauthError(w, 400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.", []int{70016})
		default:
			delete(s.devices, f.Get("device_code"))
			rt := "rt-" + randHex(16)
			s.refresh[rt] = refreshGrant{client: d.client, mailbox: d.approved, scope: d.scope}
			s.issue(w, d.approved, d.scope, rt)
		}
	case "authorization_code":
		s.requests["authorization_code"]++
		if !s.clientOK(w, f) {
			return
		}
		c := s.codes[f.Get("code")]
		delete(s.codes, f.Get("code"))
		sum := sha256.Sum256([]byte(f.Get("code_verifier")))
		switch {
		case c == nil || c.client != f.Get("client_id"):
			oauthError(w, 400, "invalid_grant", "Bad Request", nil)
		case c.redirect != f.Get("redirect_uri"):
			oauthError(w, 400, "redirect_uri_mismatch", "Bad Request", nil)
		case base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge:
			oauthError(w, 400, "invalid_grant", "Invalid code verifier.", nil)
		default:
			rt := "rt-" + randHex(16)
			s.refresh[rt] = refreshGrant{client: c.client, mailbox: c.mailbox, scope: c.scope}
			s.issue(w, c.mailbox, c.scope, rt)
		}
	default:
		oauthError(w, 400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type '"+grant+"'", []int{70003})
	}
}

// clientOK checks the client id and, for a confidential client, the secret
// in the body, answering Entra's errors.
func (s *Server) clientOK(w http.ResponseWriter, f url.Values) bool {
	id := f.Get("client_id")
	a, ok := s.clients[id]
	switch {
	case !ok:
		oauthError(w, 400, "unauthorized_client", "AADSTS700016: Application with identifier '"+id+"' was not found in the directory 'test'.", []int{700016})
		return false
	case a.cert != nil:
		if desc, code := s.checkAssertion(a.cert, id, f); desc != "" {
			oauthError(w, 401, "invalid_client", desc, []int{code})
			return false
		}
	case a.secret != "" && f.Get("client_secret") != a.secret:
		oauthError(w, 401, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+id+"'.", []int{7000215})
		return false
	}
	return true
}

func (s *Server) jwtBearer(w http.ResponseWriter, assertion string) {
	bad := func(desc string) { oauthError(w, 400, "invalid_grant", desc, nil) }
	cs, err := jws.Decode(assertion)
	if err != nil {
		bad("Invalid JWT: cannot decode")
		return
	}
	acct := s.accounts[cs.Iss]
	if acct == nil {
		bad("Invalid JWT Signature.")
		return
	}
	if jws.Verify(assertion, acct.pub) != nil {
		bad("Invalid JWT Signature.")
		return
	}
	now := time.Now().Unix()
	switch {
	case cs.Aud != s.TokenURL():
		bad("Invalid JWT: aud is not the token endpoint")
	case cs.Exp <= now || cs.Exp > now+3600+60 || cs.Iat > now+60:
		bad("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
	case cs.Scope != "https://mail.google.com/":
		oauthError(w, 400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.", nil)
	case cs.Sub == "":
		bad("Invalid JWT: no subject")
	case !s.delegated[cs.Sub]:
		oauthError(w, 401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.", nil)
	default:
		s.issue(w, cs.Sub, cs.Scope, "")
	}
}

// issue answers a new access token for mailbox (and a refresh token if rt
// is set). Called with s.mu held.
func (s *Server) issue(w http.ResponseWriter, mailbox, scope, rt string) {
	s.issueFor(w, "", mailbox, scope, rt)
}

// issueFor issues an app-only token when app is set, else a token of mailbox.
func (s *Server) issueFor(w http.ResponseWriter, app, mailbox, scope, rt string) {
	tok := "at-" + randHex(1200) // as long as Entra's tokens: AUTH lines of over 3 KB
	s.tokens[tok] = &issued{app: app, mailbox: mailbox, scope: scope, expiry: time.Now().Add(s.lifetime)}
	body := map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": int(s.lifetime.Seconds()), "scope": scope}
	if rt != "" {
		body["refresh_token"] = rt
	}
	writeJSON(w, 200, body)
}

func oauthError(w http.ResponseWriter, status int, code, desc string, codes []int) {
	body := map[string]any{"error": code, "error_description": desc}
	if codes != nil {
		body["error_codes"] = codes
		body["error_description"] = desc + "\r\nTrace ID: 0000 Correlation ID: 0000 Timestamp: " + time.Now().UTC().Format("2006-01-02 15:04:05Z")
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("oauthtest at %s", s.URL) }

// checkAssertion verifies a client assertion as Entra does: the
// certificate named by x5t#S256, the RS256 signature, aud, iss, sub, the
// validity window and a jti used once. It returns Entra's description and
// code of the first problem, or "".
func (s *Server) checkAssertion(cert *x509.Certificate, client string, f url.Values) (string, int) {
	if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || f.Get("client_secret") != "" {
		return "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.", 7000218
	}
	parts := strings.Split(f.Get("client_assertion"), ".")
	if len(parts) != 3 {
		return "AADSTS50027: JWT token is invalid or malformed.", 50027
	}
	var hdr map[string]string
	var cl struct {
		Aud, Iss, Sub, Jti string
		Exp, Nbf           int64
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &hdr) != nil || json.Unmarshal(cb, &cl) != nil {
		return "AADSTS50027: JWT token is invalid or malformed.", 50027
	}
	thumb := sha256.Sum256(cert.Raw)
	if hdr["alg"] != "RS256" || hdr["x5t#S256"] != base64.RawURLEncoding.EncodeToString(thumb[:]) {
		return "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application.", 700027
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ok || rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) != nil {
		return "AADSTS700027: Client assertion failed signature validation.", 700027
	}
	now := time.Now().Unix()
	switch {
	case cl.Aud != s.TokenURL() || cl.Iss != client || cl.Sub != client:
		return "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter, or its audience is wrong.", 700021
	case cl.Exp <= now || cl.Nbf > now+60 || cl.Exp > now+3600:
		return "AADSTS700024: Client assertion is not within its valid time range.", 700024
	case cl.Jti == "" || s.jtis[cl.Jti]:
		return "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented (the assertion was replayed).", 700025
	}
	s.jtis[cl.Jti] = true
	return "", 0
}
