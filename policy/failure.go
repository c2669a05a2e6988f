package policy

import (
	"errors"
	"fmt"
)

// Class names one kind of delivery failure. The names are stable: they
// appear verbatim in logs, SMTP replies, DSNs, `tlsrelay check` output and
// metric labels, so scripts and alerts may match on them.
type Class string

// TLS failure classes: the upstream was reached but its TLS could not be
// verified under the destination's policy.
const (
	Expired           Class = "expired"
	NotYetValid       Class = "not_yet_valid"
	UnknownAuthority  Class = "unknown_authority"
	IncompleteChain   Class = "incomplete_chain"
	HostnameMismatch  Class = "hostname_mismatch"
	PinMismatch       Class = "pin_mismatch"
	TLSVersion        Class = "tls_version"
	StartTLSMissing   Class = "starttls_missing"
	InsecureAlgorithm Class = "insecure_algorithm"
	Handshake         Class = "handshake"
)

// Classes of failures that are not about TLS. They are kept apart so a
// refused connection is never reported as a certificate problem.
const (
	Connect           Class = "connect"            // DNS, refused, timeout, reset before TLS
	UpstreamTemporary Class = "upstream_temporary" // the upstream answered 4xx
	UpstreamPermanent Class = "upstream_permanent" // the upstream answered 5xx
	Protocol          Class = "protocol"           // the upstream broke the SMTP dialogue
	Auth              Class = "auth"               // the upstream refused our login
	OAuthToken        Class = "oauth_token"        // the token endpoint refused or could not be reached
	NoRoute           Class = "no_route"           // no destination claims the domain (any more)
)

// TLSClasses lists every TLS failure class, in the order of the README table.
var TLSClasses = []Class{Expired, NotYetValid, UnknownAuthority, IncompleteChain,
	HostnameMismatch, PinMismatch, TLSVersion, StartTLSMissing, InsecureAlgorithm, Handshake}

// IsTLS reports whether c is one of the TLS failure classes.
func (c Class) IsTLS() bool {
	for _, t := range TLSClasses {
		if c == t {
			return true
		}
	}
	return false
}

// Failure is the verdict on a failed attempt to reach an upstream: what
// went wrong (Class), where (Host), in words (Detail), and the one step that
// fixes it (Fix). It is an error; Err keeps the underlying cause.
type Failure struct {
	Class  Class
	Host   string // the upstream host:port
	Detail string // what was observed, for an operator
	Fix    string // what to do about it
	// Permanent is set for failures that retrying will not cure without a
	// change on one side (an upstream 5xx). TLS failures are not permanent:
	// an operator may fix the server or the policy while mail waits.
	Permanent bool
	Err       error
}

func (f *Failure) Error() string {
	s := fmt.Sprintf("%s: %s: %s", f.Host, f.Class, f.Detail)
	if f.Fix != "" {
		s += "; fix: " + f.Fix
	}
	return s
}

func (f *Failure) Unwrap() error { return f.Err }

// FailureOf returns the *Failure in err's chain, or wraps err as a
// protocol failure of upstream host (an error nobody classified).
func FailureOf(host string, err error) *Failure {
	if f, ok := AsFailure(err); ok {
		return f
	}
	return &Failure{Class: Protocol, Host: host, Detail: err.Error(), Err: err}
}

// AsFailure returns the *Failure in err's chain, if any.
func AsFailure(err error) (*Failure, bool) {
	var f *Failure
	ok := errors.As(err, &f)
	return f, ok
}
