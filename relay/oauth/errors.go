package oauth

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"tlsrelay/policy"
)

// Error is a failure to obtain a token: the endpoint refused (Code and
// Description are the provider's own), could not be reached, or the
// refresh token is missing. Its text never holds a token or a secret.
type Error struct {
	Destination string
	Provider    string
	Flow        policy.Flow
	TokenURL    string
	// Status is the HTTP status of a refusal.
	Status int
	// Code is the OAuth error code ("invalid_client", "invalid_grant").
	Code string
	// Description is the provider's error_description (redacted).
	Description string
	// AADSTS are Microsoft Entra's numeric error codes (error_codes, or
	// the AADSTS<n> in the description).
	AADSTS []int
	// Unreachable is set when no usable answer came back at all.
	Unreachable bool
	// NoRefreshToken is set when the refresh token file does not exist.
	NoRefreshToken bool
	// SaveFailed is set when a rotated refresh token could not be saved.
	SaveFailed bool
	Err        error
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.NoRefreshToken:
		return "no refresh token yet: " + e.Description
	case e.Unreachable:
		fmt.Fprintf(&b, "no usable answer from the token endpoint %s: %s", e.TokenURL, e.Description)
		return b.String()
	}
	fmt.Fprintf(&b, "the token endpoint %s refused", e.TokenURL)
	if e.Code != "" {
		fmt.Fprintf(&b, " with %s", e.Code)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	if e.Description != "" {
		fmt.Fprintf(&b, ": %s", e.Description)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// HasAADSTS reports whether Entra named code n.
func (e *Error) HasAADSTS(n int) bool {
	for _, c := range e.AADSTS {
		if c == n {
			return true
		}
	}
	return false
}

// codeRE is what an OAuth error code looks like (RFC 6749 uses lower
// case and underscores); anything else is not used as a metric label.
var codeRE = regexp.MustCompile(`^[a-z_]{1,40}$`)

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

// parseBody reads the provider's error answer: RFC 6749's error and
// error_description, and Entra's error_codes.
func (e *Error) parseBody(body []byte) {
	var v struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		Codes       []int  `json:"error_codes"`
	}
	if json.Unmarshal(body, &v) != nil {
		if q, err := url.ParseQuery(string(body)); err == nil { // a form-encoded answer (old endpoints)
			v.Error, v.Description = q.Get("error"), q.Get("error_description")
		}
	}
	e.Code, e.Description, e.AADSTS = v.Error, firstLine(v.Description), v.Codes
	if len(e.AADSTS) == 0 {
		for _, m := range aadstsRE.FindAllStringSubmatch(v.Description, -1) {
			if n, err := strconv.Atoi(m[1]); err == nil {
				e.AADSTS = append(e.AADSTS, n)
			}
		}
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// Fix is the one step that cures the failure, as far as the provider's
// codes tell. An unknown code gets no guess, only where to look.
func (e *Error) Fix() string {
	login := "run `tlsrelay oauth login -config FILE " + e.Destination + "` to obtain a new refresh token"
	switch {
	case e.NoRefreshToken:
		return login
	case e.SaveFailed:
		return "make the directory of refresh_token_file writable by tlsrelay (and the disk not full); the new token is kept in memory meanwhile"
	case e.Unreachable:
		if strings.Contains(e.Description, "x509:") || strings.Contains(e.Description, "certificate") {
			return "the token endpoint's certificate did not verify; for a private identity provider set ca_file in [destination.oauth] to its CA"
		}
		return "check that the token endpoint's host resolves and is reachable over HTTPS from this machine (firewall, HTTPS_PROXY); the relay will retry"
	case e.HasAADSTS(7000215):
		return "the client secret is wrong: create a new client secret for the app registration in Entra ID (Certificates & secrets) and configure its Value, not its Secret ID"
	case e.HasAADSTS(7000222):
		return "the client secret has expired: create a new client secret for the app registration in Entra ID (Certificates & secrets) and configure it"
	case e.HasAADSTS(700027), e.HasAADSTS(700023):
		return "the client assertion was not accepted: upload the certificate of client_cert_file (its public part, .cer/.pem) to the app registration in Entra ID (Certificates & secrets), or configure the key of a certificate already uploaded"
	case e.HasAADSTS(700024):
		return "the client assertion is outside its valid time: check this machine's clock (NTP)"
	case e.HasAADSTS(700016):
		return "no application with this client_id exists in the tenant: check client_id and tenant (the app must be registered in, or consented to by, that tenant)"
	case e.HasAADSTS(90002), e.HasAADSTS(900023):
		return "the tenant is unknown: set tenant to the directory (tenant) ID or a verified domain of the Microsoft 365 organisation"
	case e.HasAADSTS(65001):
		return "the permission has no consent: an administrator must grant admin consent for the app's permissions in Entra ID (API permissions)"
	case e.HasAADSTS(70011), e.Code == "invalid_scope":
		return "the scope is not valid for this app and flow: check scopes (Microsoft app-only: https://outlook.office365.com/.default; delegated: https://outlook.office.com/SMTP.Send offline_access; Google: https://mail.google.com/)"
	case e.HasAADSTS(700082), e.HasAADSTS(70008), e.HasAADSTS(50173), e.HasAADSTS(50076):
		return "the refresh token has expired or was revoked; " + login
	case e.Code == "invalid_grant" && e.Flow == policy.RefreshToken:
		return "the refresh token was refused (revoked, expired, or the password changed); " + login
	case e.Code == "unauthorized_client" && e.Flow == policy.JWTBearer:
		return "the service account may not impersonate mailboxes: in the Google Admin console (Security > API controls > Domain-wide delegation) add its client ID with the scope https://mail.google.com/"
	case e.Code == "invalid_grant" && e.Flow == policy.JWTBearer:
		return "Google refused the service account's assertion: check that mailbox exists in the Workspace domain, that the key in service_account_file was not deleted, and that this machine's clock is right"
	case e.Code == "invalid_client":
		return "the endpoint does not accept the client's credentials: check client_id and the client secret"
	case e.Code != "":
		return "the provider's error code " + e.Code + " and its description above say what it refused; fix it at the identity provider"
	}
	return "the token endpoint's answer above says what it refused"
}

// Failure turns a token error into the delivery verdict for host: class
// oauth_token, not permanent (a credential can be fixed while mail waits).
func (e *Error) Failure(host string) *policy.Failure {
	return &policy.Failure{Class: policy.OAuthToken, Host: host, Err: e, Detail: e.Error(), Fix: e.Fix()}
}

// resultOf is a token request's result for the metrics: its error code,
// or "unreachable".
func resultOf(err error) string {
	e, ok := err.(*Error)
	switch {
	case !ok:
		return "error"
	case e.Unreachable:
		return "unreachable"
	case e.NoRefreshToken:
		return "no_refresh_token"
	case e.SaveFailed:
		return "save_failed"
	case codeRE.MatchString(e.Code):
		return e.Code
	}
	return "error"
}
