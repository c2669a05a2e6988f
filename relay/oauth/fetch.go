package oauth

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/jwt"

	"tlsrelay/policy"
)

// maxResponse bounds the body read from a token endpoint.
const maxResponse = 256 << 10

// HTTPClient returns the client every request to cfg's endpoints goes
// through: TLS verified against the system roots or cfg's ca_file,
// bounded in time and size, no redirects followed.
func HTTPClient(cfg *policy.OAuth) *http.Client {
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        2,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{
		Timeout:   fetchTimeout,
		Transport: limitedTransport{tr},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a token endpoint does not redirect
		},
	}
}

// limitedTransport cuts every response body at maxResponse.
type limitedTransport struct{ rt http.RoundTripper }

func (t limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = limitedBody{io.LimitReader(resp.Body, maxResponse), resp.Body}
	return resp, nil
}

type limitedBody struct {
	io.Reader
	io.Closer
}

// fetcher performs the destination's token flow.
type fetcher struct {
	dest string
	cfg  *policy.OAuth
	hc   *http.Client

	// refresh_token: the token not yet saved to the file, if saving failed.
	mu      sync.Mutex
	unsaved string
}

func newFetcher(dest string, cfg *policy.OAuth) *fetcher {
	return &fetcher{dest: dest, cfg: cfg, hc: HTTPClient(cfg)}
}

func (f *fetcher) fetch(ctx context.Context) (*oauth2.Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, f.hc)
	var tok *oauth2.Token
	var err error
	switch f.cfg.Flow {
	case policy.ClientCredentials:
		cc := clientcredentials.Config{ClientID: f.cfg.ClientID, ClientSecret: f.cfg.ClientSecret.Reveal(),
			TokenURL: f.cfg.TokenURL, Scopes: f.cfg.Scopes, AuthStyle: oauth2.AuthStyleInParams}
		if cert := f.cfg.ClientCert; cert != nil {
			assertion, aerr := clientAssertion(cert, f.cfg.ClientID, f.cfg.TokenURL, time.Now())
			if aerr != nil {
				return nil, &Error{Destination: f.dest, Provider: f.cfg.Provider, Flow: f.cfg.Flow, TokenURL: f.cfg.TokenURL,
					Description: "cannot sign the client assertion: " + aerr.Error(), Err: aerr}
			}
			cc.EndpointParams = url.Values{"client_assertion_type": {clientAssertionType}, "client_assertion": {assertion}}
		}
		tok, err = cc.Token(ctx)
	case policy.JWTBearer:
		sa := f.cfg.ServiceAccount
		jc := jwt.Config{Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey.Reveal()), PrivateKeyID: sa.PrivateKeyID,
			Subject: f.cfg.Mailbox, Scopes: f.cfg.Scopes, TokenURL: f.cfg.TokenURL}
		tok, err = jc.TokenSource(ctx).Token()
	case policy.RefreshToken:
		return f.refresh(ctx)
	default:
		err = errors.New("unknown flow " + string(f.cfg.Flow))
	}
	if err != nil {
		return nil, f.wrap(err, "")
	}
	return tok, nil
}

// Endpoint is the oauth2.Config of a destination's refresh_token flow
// (also used by `tlsrelay oauth login`).
func Endpoint(cfg *policy.OAuth) *oauth2.Config {
	return &oauth2.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret.Reveal(), Scopes: cfg.Scopes,
		Endpoint: oauth2.Endpoint{TokenURL: cfg.TokenURL, AuthURL: cfg.AuthURL, DeviceAuthURL: cfg.DeviceAuthURL,
			AuthStyle: oauth2.AuthStyleInParams}}
}

// refresh redeems the refresh token. When the provider rotates it, the
// new one is written to the file (atomically, fsynced) before the access
// token is returned: a crash at any point leaves a usable grant on disk.
func (f *fetcher) refresh(ctx context.Context) (*oauth2.Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rt := f.unsaved
	if rt == "" {
		var err error
		rt, err = ReadRefreshToken(f.cfg.RefreshTokenFile)
		if err != nil {
			return nil, &Error{Destination: f.dest, Provider: f.cfg.Provider, Flow: f.cfg.Flow, TokenURL: f.cfg.TokenURL,
				NoRefreshToken: os.IsNotExist(err), Description: err.Error(), Err: err}
		}
	}
	tok, err := Endpoint(f.cfg).TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		return nil, f.wrap(err, rt)
	}
	if tok.RefreshToken != "" && tok.RefreshToken != rt {
		if err := WriteRefreshToken(f.cfg.RefreshTokenFile, tok.RefreshToken); err != nil {
			// Keep the new token in memory (the provider may already have
			// revoked the old one) and try to save it at the next refresh;
			// the access token is not used until it is on disk.
			f.unsaved = tok.RefreshToken
			return nil, &Error{Destination: f.dest, Provider: f.cfg.Provider, Flow: f.cfg.Flow, TokenURL: f.cfg.TokenURL,
				Description: "cannot save the rotated refresh token: " + err.Error(), SaveFailed: true, Err: err}
		}
	}
	f.unsaved = ""
	return tok, nil
}

// wrap turns an error of x/oauth2 or of the HTTP client into an *Error,
// with the provider's codes parsed from its answer. rt, if set, is
// redacted from the text.
func (f *fetcher) wrap(err error, rt string) *Error {
	e := &Error{Destination: f.dest, Provider: f.cfg.Provider, Flow: f.cfg.Flow, TokenURL: f.cfg.TokenURL, Err: err}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		if re.Response != nil {
			e.Status = re.Response.StatusCode
		}
		e.parseBody(re.Body)
		if e.Code == "" {
			e.Code = re.ErrorCode
		}
		if e.Description == "" {
			e.Description = re.ErrorDescription
		}
		if e.Code == "" && e.Description == "" {
			e.Description = "HTTP " + http.StatusText(e.Status) + ": " + clip(strings.TrimSpace(string(re.Body)), 200)
		}
	} else {
		e.Unreachable = true
		e.Description = err.Error()
	}
	if rt != "" {
		e.Description = strings.ReplaceAll(e.Description, rt, "********")
	}
	e.Description = clip(e.Description, 400)
	return e
}

func clip(s string, n int) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
