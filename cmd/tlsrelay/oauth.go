package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"tlsrelay/policy"
	"tlsrelay/relay/config"
	"tlsrelay/relay/oauth"
)

const oauthUsage = `Usage:
  tlsrelay oauth login -config FILE [-method device|browser] [-timeout 10m] DESTINATION
        obtain the first refresh token of a refresh_token destination and
        save it in its refresh_token_file. Microsoft: the device code flow
        (open the URL shown, enter the code). Google: the installed-app flow
        with PKCE (open the URL shown; the answer comes back to a listener on
        127.0.0.1, so run it on a machine with a browser, or forward the port).
  tlsrelay oauth status -config FILE [-json]
        show each OAuth destination: flow, mailbox, token endpoint, the
        refresh token file, and what the relay last recorded: token expiry,
        last refresh, last error.

DESTINATION is a destination's name (its first domain) or a recipient domain it claims.
`

func cmdOAuth(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, oauthUsage)
		return exitUsage
	}
	switch args[0] {
	case "login":
		return cmdOAuthLogin(args[1:], stdout, stderr)
	case "status":
		return cmdOAuthStatus(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, oauthUsage)
		return 0
	}
	fmt.Fprintf(stderr, "tlsrelay oauth: unknown subcommand %q\n\n%s", args[0], oauthUsage)
	return exitUsage
}

// findOAuthDestination finds a destination by name or by a domain it claims.
func findOAuthDestination(cfg *config.Config, name string) *policy.Destination {
	for _, d := range cfg.Table.Destinations() {
		if d.Name() == name {
			return d
		}
	}
	return cfg.Table.Lookup(name)
}

func cmdOAuthLogin(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("oauth login", stderr)
	fs.Usage = func() { fmt.Fprint(stderr, oauthUsage) }
	cfgPath := fs.String("config", "", "configuration `file`")
	method := fs.String("method", "", "`device` (device code) or `browser` (authorization code + PKCE); default: device when the provider has a device endpoint")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this `duration`")
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "tlsrelay oauth login: give exactly one DESTINATION")
		return exitUsage
	}
	cfg, _, _, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	d := findOAuthDestination(cfg, fs.Arg(0))
	switch {
	case d == nil:
		fmt.Fprintf(stderr, "tlsrelay oauth login: no destination is named or claims %q\n", fs.Arg(0))
		return exitUsage
	case d.OAuth == nil || d.OAuth.Flow != policy.RefreshToken:
		fmt.Fprintf(stderr, "tlsrelay oauth login: destination %s does not use the refresh_token flow; only it needs a login (set flow = \"refresh_token\" and refresh_token_file)\n", d.Name())
		return exitUsage
	}
	o := d.OAuth
	if *method == "" {
		*method = "browser"
		if o.DeviceAuthURL != "" {
			*method = "device"
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, oauth.HTTPClient(o))
	var tok *oauth2.Token
	var err error
	switch *method {
	case "device":
		if o.DeviceAuthURL == "" {
			fmt.Fprintf(stderr, "tlsrelay oauth login: destination %s has no device_auth_url (Google does not allow the mail scope in its device flow: use -method browser)\n", d.Name())
			return exitUsage
		}
		tok, err = deviceLogin(ctx, o, stdout)
	case "browser":
		if o.AuthURL == "" {
			fmt.Fprintf(stderr, "tlsrelay oauth login: destination %s has no auth_url\n", d.Name())
			return exitUsage
		}
		tok, err = browserLogin(ctx, o, stdout)
	default:
		fmt.Fprintf(stderr, "tlsrelay oauth login: -method is device or browser, not %q\n", *method)
		return exitUsage
	}
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay oauth login:", loginError(d, err))
		return 1
	}
	if tok.RefreshToken == "" {
		fmt.Fprintln(stderr, "tlsrelay oauth login: the provider issued no refresh token; the scopes must allow offline access (Microsoft: offline_access; Google: the consent screen must be shown again, revoke the app's access and retry)")
		return 1
	}
	if err := oauth.WriteRefreshToken(o.RefreshTokenFile, tok.RefreshToken); err != nil {
		fmt.Fprintln(stderr, "tlsrelay oauth login: cannot save the refresh token:", err)
		return 1
	}
	fmt.Fprintf(stdout, "Saved the refresh token for %s in %s (mode 0600). The relay uses it from its next token request; no restart is needed.\n", o.Mailbox, o.RefreshTokenFile)
	return 0
}

// loginError words an error of the login flows without any token.
func loginError(d *policy.Destination, err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		msg := "the token endpoint refused: " + re.ErrorCode
		if re.ErrorDescription != "" {
			msg += ": " + strings.SplitN(re.ErrorDescription, "\n", 2)[0]
		}
		return msg
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out waiting for the sign-in to complete"
	}
	return err.Error()
}

// deviceLogin runs the device authorization grant (RFC 8628): print where
// to go and the code to enter, then poll until the user has signed in.
func deviceLogin(ctx context.Context, o *policy.OAuth, stdout io.Writer) (*oauth2.Token, error) {
	cfg := oauth.Endpoint(o)
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "To sign in as %s, open %s in a browser and enter the code %s\n", o.Mailbox, da.VerificationURI, da.UserCode)
	fmt.Fprintln(stdout, "Waiting for the sign-in to complete...")
	return cfg.DeviceAccessToken(ctx, da)
}

// browserLogin runs the authorization code grant with PKCE (RFC 7636) and
// a loopback redirect (RFC 8252): print the URL to open, receive the code
// on 127.0.0.1, exchange it.
func browserLogin(ctx context.Context, o *policy.OAuth, stdout io.Writer) (*oauth2.Token, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	cfg := oauth.Endpoint(o)
	cfg.RedirectURL = "http://" + ln.Addr().String() + "/"
	state := randomState()
	verifier := oauth2.GenerateVerifier()
	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("state") != state {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		var res result
		if e := q.Get("error"); e != "" {
			res.err = fmt.Errorf("the sign-in was refused: %s %s", e, q.Get("error_description"))
			fmt.Fprintln(w, "tlsrelay: the sign-in was refused; see the terminal.")
		} else {
			res.code = q.Get("code")
			fmt.Fprintln(w, "tlsrelay: signed in. You may close this window.")
		}
		select {
		case got <- res:
		default:
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	url := cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oauth2.AccessTypeOffline, oauth2.SetAuthURLParam("prompt", "consent"),
		oauth2.SetAuthURLParam("login_hint", o.Mailbox))
	fmt.Fprintf(stdout, "To sign in as %s, open this URL in a browser on this machine:\n%s\n", o.Mailbox, url)
	fmt.Fprintf(stdout, "Waiting for the browser to come back to %s ...\n", cfg.RedirectURL)
	select {
	case res := <-got:
		if res.err != nil {
			return nil, res.err
		}
		return cfg.Exchange(ctx, res.code, oauth2.VerifierOption(verifier))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func randomState() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// oauthStatus is one destination in `tlsrelay oauth status`.
type oauthStatus struct {
	Destination      string    `json:"destination"`
	Provider         string    `json:"provider,omitempty"`
	Flow             string    `json:"flow"`
	Mailbox          string    `json:"mailbox"`
	TokenURL         string    `json:"token_url"`
	RefreshTokenFile string    `json:"refresh_token_file,omitempty"`
	RefreshTokenSet  *bool     `json:"refresh_token_present,omitempty"`
	RefreshTokenTime time.Time `json:"refresh_token_saved,omitzero"`
	// From the relay's status file.
	RecordedAt  time.Time `json:"recorded_at,omitzero"`
	Expiry      time.Time `json:"token_expiry,omitzero"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

func cmdOAuthStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("oauth status", stderr)
	cfgPath := fs.String("config", "", "configuration `file`")
	asJSON := fs.Bool("json", false, "print JSON")
	if rc := parseFlags(fs, args, 0); rc != 0 {
		return max(rc, 0)
	}
	cfg, _, _, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	recorded := map[string]oauth.Status{}
	var written time.Time
	if rep, err := oauth.ReadStatus(oauth.StatusFileIn(cfg.Queue.Dir)); err == nil {
		written = rep.Written
		for _, st := range rep.Destinations {
			recorded[st.Destination] = st
		}
	}
	var out []oauthStatus
	for _, d := range cfg.Table.Destinations() {
		o := d.OAuth
		if o == nil {
			continue
		}
		s := oauthStatus{Destination: d.Name(), Provider: o.Provider, Flow: string(o.Flow), Mailbox: o.Mailbox, TokenURL: o.TokenURL}
		if o.RefreshTokenFile != "" {
			s.RefreshTokenFile = o.RefreshTokenFile
			fi, err := os.Stat(o.RefreshTokenFile)
			present := err == nil && fi.Size() > 0
			s.RefreshTokenSet = &present
			if present {
				s.RefreshTokenTime = fi.ModTime().UTC()
			}
		}
		if st, ok := recorded[d.Name()]; ok && st.Flow == o.Flow && st.Mailbox == o.Mailbox {
			s.RecordedAt = written
			s.Expiry, s.LastRefresh, s.LastError, s.LastErrorAt = st.Expiry, st.LastRefresh, st.LastError, st.LastErrorAt
		}
		out = append(out, s)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return 0
	}
	if len(out) == 0 {
		fmt.Fprintln(stdout, "No destination uses OAuth.")
		return 0
	}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	}
	for i, s := range out {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "%s\n", s.Destination)
		row := func(k, v string) { fmt.Fprintf(stdout, "  %-15s %s\n", k+":", v) }
		if s.Provider != "" {
			row("provider", s.Provider)
		}
		row("flow", s.Flow)
		row("mailbox", s.Mailbox)
		row("token endpoint", s.TokenURL)
		if s.RefreshTokenFile != "" {
			if *s.RefreshTokenSet {
				row("refresh token", fmt.Sprintf("%s, saved %s", s.RefreshTokenFile, ts(s.RefreshTokenTime)))
			} else {
				row("refresh token", fmt.Sprintf("MISSING (%s): run tlsrelay oauth login -config FILE %s", s.RefreshTokenFile, s.Destination))
			}
		}
		if s.RecordedAt.IsZero() {
			row("token", "no token requested yet by a relay on this spool")
			continue
		}
		row("token expiry", ts(s.Expiry))
		row("last refresh", ts(s.LastRefresh))
		if s.LastError != "" {
			row("last error", fmt.Sprintf("%s at %s", s.LastError, ts(s.LastErrorAt)))
		} else {
			row("last error", "none")
		}
		row("recorded", ts(s.RecordedAt)+" by the relay")
	}
	return 0
}
