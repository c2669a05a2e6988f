package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// OAuthOptions make the sink take OAuth tokens, the way Gmail and
// Exchange Online do: AUTH XOAUTH2 and AUTH OAUTHBEARER, offered after
// TLS only (go-smtp offers AUTH only over TLS here).
type OAuthOptions struct {
	// Valid reports whether token may log in as mailbox (e.g. it was
	// issued by the test token endpoint for that mailbox and has not
	// expired).
	Valid func(mailbox, token string) bool
	// Refusal is the final reply to a refused token; default
	// 535 5.7.8 (Gmail's). Exchange Online's is 535 5.7.3.
	Refusal *smtp.SMTPError
	// Immediate answers a refused token with Refusal at once, as Exchange
	// Online does. Otherwise the sink first sends an error challenge
	// (334 with base64 JSON: status, schemes, scope), as Gmail does, and
	// sends Refusal only after the client's answer to it: an empty line
	// for XOAUTH2, a single 0x01 for OAUTHBEARER (RFC 7628, 3.2.3).
	Immediate bool
	// After, if set, is asked after a valid token: a non-nil reply refuses
	// the login anyway (e.g. Exchange's 5.7.139, SMTP AUTH disabled).
	After func(mailbox string) *smtp.SMTPError
	// Scope is named in the error challenge (default https://mail.google.com/).
	Scope string
}

// The mechanisms' names.
const (
	mechXOAuth2     = "XOAUTH2"
	mechOAuthBearer = "OAUTHBEARER"
)

// errUnexpected is sent when a client answers an error challenge with
// something else than the mechanism asks for.
var errUnexpected = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Unexpected answer to the error challenge"}

// oauthServer is the server side of XOAUTH2 and OAUTHBEARER.
type oauthServer struct {
	opts      *OAuthOptions
	mech      string
	onSuccess func(user string)
	onRefusal func()
	failed    *smtp.SMTPError // set once an error challenge was sent
}

func (s *oauthServer) Next(resp []byte) ([]byte, bool, error) {
	if s.failed != nil {
		want := []byte{}
		if s.mech == mechOAuthBearer {
			want = []byte{0x01}
		}
		if !bytes.Equal(resp, want) {
			return nil, false, errUnexpected
		}
		return nil, false, s.failed
	}
	if resp == nil {
		return []byte{}, false, nil // ask for the initial response
	}
	var user, token string
	var ok bool
	if s.mech == mechXOAuth2 {
		user, token, ok = parseXOAuth2(resp)
	} else {
		user, token, ok = parseOAuthBearer(resp)
	}
	if !ok {
		return nil, false, &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Malformed " + s.mech + " response"}
	}
	refusal := s.opts.Refusal
	if refusal == nil {
		refusal = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Username and Password not accepted."}
	}
	if s.opts.Valid == nil || !s.opts.Valid(user, token) {
		s.onRefusal()
		if s.opts.Immediate {
			return nil, false, refusal
		}
		scope := s.opts.Scope
		if scope == "" {
			scope = "https://mail.google.com/"
		}
		s.failed = refusal
		challenge, _ := json.Marshal(map[string]string{"status": "401", "schemes": "Bearer", "scope": scope})
		return challenge, false, nil
	}
	if s.opts.After != nil {
		if r := s.opts.After(user); r != nil {
			return nil, false, r
		}
	}
	s.onSuccess(user)
	return nil, true, nil
}

// parseXOAuth2 splits "user=U ^A auth=Bearer T ^A ^A".
func parseXOAuth2(b []byte) (user, token string, ok bool) {
	s := string(b)
	if !strings.HasSuffix(s, "\x01\x01") {
		return "", "", false
	}
	parts := strings.Split(strings.TrimSuffix(s, "\x01\x01"), "\x01")
	if len(parts) != 2 || !strings.HasPrefix(parts[0], "user=") || !strings.HasPrefix(parts[1], "auth=Bearer ") {
		return "", "", false
	}
	return strings.TrimPrefix(parts[0], "user="), strings.TrimPrefix(parts[1], "auth=Bearer "), true
}

// parseOAuthBearer splits "n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A"
// (RFC 7628, 3.1).
func parseOAuthBearer(b []byte) (user, token string, ok bool) {
	gs2, rest, found := strings.Cut(string(b), ",")
	if !found || gs2 != "n" {
		return "", "", false
	}
	authz, kvs, found := strings.Cut(rest, ",")
	if !found || !strings.HasPrefix(authz, "a=") || !strings.HasPrefix(kvs, "\x01") || !strings.HasSuffix(kvs, "\x01\x01") {
		return "", "", false
	}
	user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(strings.TrimPrefix(authz, "a="))
	for _, kv := range strings.Split(strings.Trim(kvs, "\x01"), "\x01") {
		if v, ok := strings.CutPrefix(kv, "auth="); ok {
			t, ok := strings.CutPrefix(v, "Bearer ")
			if !ok {
				return "", "", false
			}
			token = t
		}
	}
	return user, token, token != ""
}

var _ sasl.Server = (*oauthServer)(nil)

var errNoMech = errors.New("mechanism not offered")
