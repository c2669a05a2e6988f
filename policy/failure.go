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
	// DANEMismatch: the server's chain matches none of the host's usable
	// TLSA records (DANE-EE), or does not verify to the one it matches
	// (DANE-TA).
	DANEMismatch Class = "dane_mismatch"
	// DANEUnusable: the host has DNSSEC-validated TLSA records, but none
	// that SMTP can use (usage 0 or 1, unknown parameters, bad digest).
	DANEUnusable Class = "dane_unusable"
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

// Classes of MX delivery (upstream = "mx") that come before or beside TLS.
const (
	// DNS: a lookup failed (SERVFAIL, timeout), or a DNSSEC-validated TLSA
	// lookup failed so DANE could not be decided.
	DNS Class = "dns"
	// NoSuchDomain: the recipient domain does not exist (NXDOMAIN).
	NoSuchDomain Class = "no_such_domain"
	// NullMX: the recipient domain accepts no mail (RFC 7505).
	NullMX Class = "null_mx"
	// MXSecurityFailure: the domain does not publish what mx_security requires
	// (DANE or an MTA-STS policy), or no MX host matches its MTA-STS
	// policy in enforce mode.
	MXSecurityFailure Class = "mx_security"
	// RequireTLS: the message was sent with REQUIRETLS (RFC 8689), and no
	// next hop both offers REQUIRETLS and was found securely (DNSSEC or
	// MTA-STS).
	RequireTLS Class = "requiretls"
)

// ResultType is a TLS-RPT result type (RFC 8460 §4.3).
type ResultType string

// The TLS-RPT result types.
const (
	ResultSTARTTLSNotSupported ResultType = "starttls-not-supported"
	ResultCertHostMismatch     ResultType = "certificate-host-mismatch"
	ResultCertExpired          ResultType = "certificate-expired"
	ResultCertNotTrusted       ResultType = "certificate-not-trusted"
	ResultValidationFailure    ResultType = "validation-failure"
	ResultTLSAInvalid          ResultType = "tlsa-invalid"
	ResultDNSSECInvalid        ResultType = "dnssec-invalid"
	ResultDANERequired         ResultType = "dane-required"
	ResultSTSFetchError        ResultType = "sts-policy-fetch-error"
	ResultSTSPolicyInvalid     ResultType = "sts-policy-invalid"
	ResultSTSWebPKIInvalid     ResultType = "sts-webpki-invalid"
)

// RPT returns the failure's TLS-RPT result type: Result when set, else
// the one its class implies; "" for a failure TLS-RPT does not count
// (a refused connection, an upstream's reply).
func (f *Failure) RPT() ResultType {
	if f.Result != "" {
		return f.Result
	}
	switch f.Class {
	case StartTLSMissing:
		return ResultSTARTTLSNotSupported
	case HostnameMismatch:
		return ResultCertHostMismatch
	case Expired, NotYetValid:
		return ResultCertExpired
	case UnknownAuthority, IncompleteChain:
		return ResultCertNotTrusted
	case DANEUnusable:
		return ResultTLSAInvalid
	}
	if f.Class.IsTLS() {
		return ResultValidationFailure
	}
	return ""
}

// TLSClasses lists every TLS failure class, in the order of the README table.
var TLSClasses = []Class{Expired, NotYetValid, UnknownAuthority, IncompleteChain,
	HostnameMismatch, PinMismatch, TLSVersion, StartTLSMissing, InsecureAlgorithm, Handshake,
	DANEMismatch, DANEUnusable}

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
	// Result is the TLS-RPT result type when it is not the one the class
	// implies (see RPT).
	Result ResultType
	Err    error
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
