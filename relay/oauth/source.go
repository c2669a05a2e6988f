// Package oauth obtains and keeps the OAuth 2.0 access tokens that
// destinations log in to their upstreams with (XOAUTH2, OAUTHBEARER).
// One Source per destination is shared by every delivery worker: it
// caches the token, asks the token endpoint at most once at a time,
// refreshes ahead of expiry, persists a rotated refresh token before it
// is relied on, and turns an endpoint's refusal into a typed Error that
// names the provider's code and the fix. Tokens and secrets never appear
// in an error's text.
package oauth

import (
	"context"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"tlsrelay/policy"
)

// Token is an access token to log in with.
type Token struct {
	// Value is the access token; printing it shows a mask.
	Value  policy.Secret
	Expiry time.Time
	// Fresh is set when the token was fetched for this call rather than
	// taken from the cache: a refusal of a fresh token is not cured by
	// fetching another.
	Fresh bool
}

// Status is what a Source knows about its tokens, without the tokens.
type Status struct {
	Destination string      `json:"destination"`
	Provider    string      `json:"provider,omitempty"`
	Flow        policy.Flow `json:"flow"`
	Mailbox     string      `json:"mailbox"`
	TokenURL    string      `json:"token_url"`
	Expiry      time.Time   `json:"token_expiry,omitzero"`
	LastRefresh time.Time   `json:"last_refresh,omitzero"`
	LastError   string      `json:"last_error,omitempty"`
	LastErrorAt time.Time   `json:"last_error_at,omitzero"`
	Requests    int         `json:"requests"`
}

// fetchTimeout bounds one exchange with a token endpoint.
const fetchTimeout = 30 * time.Second

// Source hands out access tokens for one destination.
type Source struct {
	dest string
	cfg  *policy.OAuth
	// fetch asks the token endpoint for a new token.
	fetch func(ctx context.Context) (*oauth2.Token, error)
	now   func() time.Time
	// observe, if set, is told the result of every token request and the
	// state afterwards.
	observe func(result string, st Status)

	mu       sync.Mutex
	cur      *oauth2.Token
	obtained time.Time
	inflight *call
	status   Status
}

type call struct {
	done chan struct{}
	tok  *oauth2.Token
	err  error
}

// NewSource returns a Source for destination dest configured by cfg.
func NewSource(dest string, cfg *policy.OAuth) *Source {
	s := &Source{dest: dest, cfg: cfg, now: time.Now,
		status: Status{Destination: dest, Provider: cfg.Provider, Flow: cfg.Flow, Mailbox: cfg.Mailbox, TokenURL: cfg.TokenURL}}
	s.fetch = newFetcher(dest, cfg).fetch
	return s
}

// Mailbox is the identity the tokens are for.
func (s *Source) Mailbox() string { return s.cfg.Mailbox }

// Config is the destination's OAuth configuration.
func (s *Source) Config() *policy.OAuth { return s.cfg }

// Token returns a valid access token: the cached one unless it is due
// for renewal, else a new one. Concurrent callers share one request.
func (s *Source) Token(ctx context.Context) (Token, error) {
	s.mu.Lock()
	if t := s.cur; t != nil && !s.due(t) {
		s.mu.Unlock()
		return Token{Value: policy.Secret(t.AccessToken), Expiry: t.Expiry}, nil
	}
	c := s.inflight
	if c == nil {
		c = &call{done: make(chan struct{})}
		s.inflight = c
		go s.run(c)
	}
	s.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
	if c.err != nil {
		// A token still valid (only due for early renewal) is better
		// than none while the endpoint has trouble.
		s.mu.Lock()
		t := s.cur
		s.mu.Unlock()
		if t != nil && s.now().Before(t.Expiry) {
			return Token{Value: policy.Secret(t.AccessToken), Expiry: t.Expiry}, nil
		}
		return Token{}, c.err
	}
	return Token{Value: policy.Secret(c.tok.AccessToken), Expiry: c.tok.Expiry, Fresh: true}, nil
}

// due reports whether t should be renewed: when less than a quarter of
// its lifetime, at most five minutes, remains.
func (s *Source) due(t *oauth2.Token) bool {
	if t.Expiry.IsZero() {
		return false
	}
	ahead := t.Expiry.Sub(s.obtained) / 4
	ahead = min(ahead, 5*time.Minute)
	return !s.now().Add(ahead).Before(t.Expiry)
}

// run performs one token request on behalf of every waiting caller. It
// has its own time bound: a caller giving up does not cancel it for the
// others.
func (s *Source) run(c *call) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	start := s.now()
	tok, err := s.fetch(ctx)
	if err == nil && (tok == nil || tok.AccessToken == "") {
		err = &Error{Destination: s.dest, Flow: s.cfg.Flow, Provider: s.cfg.Provider, TokenURL: s.cfg.TokenURL,
			Description: "the token endpoint answered without an access token"}
	}
	s.mu.Lock()
	s.status.Requests++
	result := "success"
	if err != nil {
		err = redact(err, s.cfg)
		s.status.LastError, s.status.LastErrorAt = err.Error(), s.now()
		result = resultOf(err)
	} else {
		s.cur, s.obtained = tok, start
		s.status.Expiry, s.status.LastRefresh = tok.Expiry, start
		s.status.LastError, s.status.LastErrorAt = "", time.Time{}
	}
	st := s.status
	s.mu.Unlock()
	// Recorded before the callers go on, so the status file is written
	// by the time a delivery attempt ends.
	if s.observe != nil {
		s.observe(result, st)
	}
	s.mu.Lock()
	c.tok, c.err = tok, err
	s.inflight = nil
	s.mu.Unlock()
	close(c.done)
}

// Invalidate drops the cached token if it is value: the upstream refused
// it, so the next Token call fetches a new one.
func (s *Source) Invalidate(value policy.Secret) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil && s.cur.AccessToken == value.Reveal() {
		s.cur = nil
	}
}

// Status returns what the source knows, without any token.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// redact makes sure no secret of cfg appears in err's text (a provider
// could echo one in its error description).
func redact(err error, cfg *policy.OAuth) error {
	e, ok := err.(*Error)
	if !ok {
		return err
	}
	for _, secret := range []string{cfg.ClientSecret.Reveal()} {
		if len(secret) >= 4 {
			e.Description = strings.ReplaceAll(e.Description, secret, "********")
		}
	}
	return e
}
