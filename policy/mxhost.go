package policy

import (
	"net"
	"slices"
	"strings"
)

// MXHost is what one connection of MX delivery (upstream = "mx") must
// prove about one mail exchanger of a recipient domain. The destination's
// own rules (min_tls, ca_file, pin_sha256) apply on top.
type MXHost struct {
	// Name is the MX host name as the MX record gave it; Base is where its
	// secure CNAMEs led (the TLSA base domain, RFC 7672 §2.2.2), Name when
	// there were none; Domain is the recipient domain.
	Name, Base, Domain string
	// DANE: the server must match one of TLSA, the DNSSEC-validated TLSA
	// records found at TLSAName (RFC 7672). Otherwise its certificate must
	// verify to the WebPKI roots (or ca_file) and name Name.
	DANE     bool
	TLSA     []TLSA
	TLSAName string
}

// ForMX returns the policy of one connection to the mail exchanger h at
// addr (an IP and port): d's rules with h's names, and with DANE when h
// has usable TLSA records. The copy shares d's TLS session cache (it is
// keyed by server name; verification runs on every resumed session).
func (d *Destination) ForMX(h MXHost, addr string) *Destination {
	c := *d
	c.mx = &h
	c.hops, c.parent = nil, d
	port := "25"
	if _, p, err := net.SplitHostPort(addr); err == nil {
		port = p
	}
	c.Upstream = net.JoinHostPort(h.Name, port)
	c.Host = h.Name
	c.Addr = addr
	c.ServerName = h.Name
	c.RequireHostname = []string{h.Name}
	if h.DANE {
		// SNI is the TLSA base domain (RFC 7672 §8.1); DANE-TA accepts the
		// base domain, the MX name and the recipient domain (§3.2.2).
		c.ServerName = h.Base
		c.RequireHostname = uniqueLower(h.Base, h.Name, h.Domain)
	}
	return &c
}

// MXHost returns what this connection must prove when it is one to a
// mail exchanger (see ForMX), or nil.
func (d *Destination) MXHost() *MXHost { return d.mx }

// IsMX reports whether the destination delivers straight to each
// recipient domain's mail exchangers (upstream = "mx").
func (d *Destination) IsMX() bool { return d.MXSecurity != "" }

// MXSecurity is what MX delivery requires of a recipient domain's mail
// exchangers (mx_security).
type MXSecurity string

// The levels of mx_security.
const (
	// DANEOrSTS: DANE where the host has DNSSEC-validated TLSA records,
	// else the domain's MTA-STS policy, else Verify.
	DANEOrSTS MXSecurity = "dane-or-sts"
	// DANEOnly: every host must be authenticated by DANE.
	DANEOnly MXSecurity = "dane"
	// STSOnly: the domain must have an MTA-STS policy in force, and every
	// host must match it with a WebPKI-valid certificate for its name.
	STSOnly MXSecurity = "sts"
	// Verify: a WebPKI-valid certificate (system roots, or ca_file) for
	// the MX host's name; DANE and MTA-STS are not looked up.
	Verify MXSecurity = "verify"
)

// MXPort is the SMTP port of mail exchangers.
const MXPort = "25"

// DialAddr is the address to connect to: Addr when set (an MX host's
// address), else Upstream.
func (d *Destination) DialAddr() string {
	if d.Addr != "" {
		return d.Addr
	}
	return d.Upstream
}

func uniqueLower(names ...string) []string {
	var out []string
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
