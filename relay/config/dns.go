package config

import (
	"net"
	"net/netip"

	"tlsrelay/policy"
)

// DNS is the [dns] table: the resolver that delivery to mail exchangers
// (upstream = "mx") asks for MX, address, TXT and TLSA records.
type DNS struct {
	// Resolver is the validating resolver's address, IP:port.
	Resolver string `toml:"resolver"`
	// TrustAD trusts the AD bit (DNSSEC validated) of a resolver that is
	// not on this machine's loopback.
	TrustAD bool `toml:"trust_ad"`
	// AllowInternalAddresses lets delivery to mail exchangers connect to
	// internal addresses (loopback, private, link-local, ...: see
	// policy.IsInternalAddress), for mail exchangers and MTA-STS policy
	// servers alike. Off, a host resolving only to such addresses is not
	// tried.
	AllowInternalAddresses bool `toml:"allow_internal_addresses"`
}

// checkDNS checks the [dns] table, and refuses DANE that would trust the
// AD bit of a resolver reached over the network without trust_ad (RFC
// 6698 A.3: the bit is only as good as the path it came over).
func (c *Config) checkDNS(bad func(table, key, format string, args ...any) *Error, p *problems) {
	host, _, err := net.SplitHostPort(c.DNS.Resolver)
	ip, ipErr := netip.ParseAddr(host)
	if err != nil || ipErr != nil {
		p.add(bad("dns", "resolver", "%q is not IP:port; write the address of a validating resolver, e.g. \"127.0.0.1:53\" (a name would need DNS to be found)", c.DNS.Resolver))
		return
	}
	if ip.IsLoopback() || c.DNS.TrustAD || c.Table == nil {
		return
	}
	for _, d := range c.Table.Destinations() {
		if d.MXSecurity == policy.DANEOrSTS || d.MXSecurity == policy.DANEOnly {
			p.add(bad("dns", "resolver", "%s is not on this machine's loopback, and destination %s uses DANE (mx_security = %q), which trusts the resolver's AD bit: anyone on the path to %s could forge it (RFC 6698 A.3); run a validating resolver on 127.0.0.1 (unbound, see README), or set trust_ad = true if the path to it is protected (a sidecar, IPsec), or set mx_security = \"sts\" or \"verify\"",
				c.DNS.Resolver, d.Name(), d.MXSecurity, c.DNS.Resolver))
			return
		}
	}
}
