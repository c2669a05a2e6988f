package policy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// IssuerCheck is what fetching a leaf's AIA caIssuers URL showed.
type IssuerCheck struct {
	URL string `json:"url"`
	// Found: the URL served the certificate that issued the leaf.
	Found   bool   `json:"found"`
	Subject string `json:"subject,omitempty"`
	// Completes: with it, the chain verifies to this destination's roots;
	// so the server only needs to send it (incomplete_chain confirmed).
	Completes bool   `json:"completes_chain"`
	Problem   string `json:"problem,omitempty"`
}

// maxIssuerBytes bounds what is read from a caIssuers URL.
const maxIssuerBytes = 64 << 10

// aiaTimeout bounds a whole caIssuers fetch: DNS, connect, request, body.
const aiaTimeout = 5 * time.Second

// AIAReach says which addresses FetchMissingIssuer may connect to.
type AIAReach int

const (
	// AIAPublicOnly refuses every address IsInternalAddress reports: an
	// upstream on the Internet has no business sending the relay's host to
	// its own loopback, LAN or cloud metadata service.
	AIAPublicOnly AIAReach = iota
	// AIAInternalToo also allows internal addresses; it is for checking an
	// upstream that is itself at one (a private CA on the same network).
	AIAInternalToo
)

// ReachFor returns the AIAReach for checking upstream (host:port): internal
// addresses are allowed when the upstream's host is such an address or
// resolves to one.
func ReachFor(ctx context.Context, upstream string) AIAReach {
	host, _, err := net.SplitHostPort(upstream)
	if err != nil {
		host = upstream
	}
	addrs := []netip.Addr{}
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = append(addrs, ip)
	} else if ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host); err == nil {
		addrs = ips
	}
	for _, ip := range addrs {
		if IsInternalAddress(ip) {
			return AIAInternalToo
		}
	}
	return AIAPublicOnly
}

// nonPublic are ranges not reachable on the public Internet that
// net/netip has no predicate for.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT (RFC 6598)
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64 (RFC 8215)
	netip.MustParsePrefix("100::/64"),       // discard-only
}

// Ranges of IPv6 that carry an IPv4 address.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// IsInternalAddress reports whether ip is not a public unicast address:
// loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16 with
// the cloud metadata services, fe80::/10), unspecified, multicast, or
// another range not routed on the Internet. An IPv4 address inside IPv6
// (mapped, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged as that IPv4
// address.
func IsInternalAddress(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return IsInternalAddress(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return IsInternalAddress(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() || ip.IsMulticast() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() {
		return true
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// AIAAddressError is the refusal to connect to an internal address for a
// caIssuers URL when the checked upstream is not at one.
type AIAAddressError struct {
	Addr netip.Addr
}

func (e *AIAAddressError) Error() string {
	return fmt.Sprintf("not fetched: it leads to %s, a loopback, private, link-local or otherwise internal address, and the checked upstream is not at one", e.Addr)
}

// aiaClient is an HTTP client for one caIssuers fetch: no proxy, no
// redirects, no connection to an internal address unless reach allows it.
// The check is made on the address actually dialed, after DNS resolution,
// so a name that resolves (or rebinds) to an internal address is refused
// too.
func aiaClient(reach AIAReach) *http.Client {
	dialer := &net.Dialer{Timeout: aiaTimeout, Control: func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("not fetched: cannot judge the address %q: %w", address, err)
		}
		if reach != AIAInternalToo && IsInternalAddress(ap.Addr()) {
			return &AIAAddressError{Addr: ap.Addr().Unmap()}
		}
		return nil
	}}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // a proxy would make the dialed address meaningless
			DialContext:            dialer.DialContext,
			DisableKeepAlives:      true,
			ResponseHeaderTimeout:  aiaTimeout,
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       aiaTimeout,
	}
}

// FetchMissingIssuer confirms an incomplete_chain diagnosis: it fetches
// the leaf's caIssuers URL and checks whether that certificate issued the
// leaf and completes the chain. The fetch is plain HTTP only (as RFC 5280
// publishes them), follows no redirect, uses no proxy, takes at most 5 s
// and 64 KiB, and connects to an internal address (IsInternalAddress)
// only with AIAInternalToo. It is used by `tlsrelay check` only, to
// explain; a chain is never trusted because of what this fetches, and
// delivery never fetches anything.
func (d *Destination) FetchMissingIssuer(ctx context.Context, sent []*x509.Certificate, clock Clock, reach AIAReach) *IssuerCheck {
	if len(sent) == 0 || len(sent[0].IssuingCertificateURL) == 0 {
		return nil
	}
	leaf := sent[0]
	ic := &IssuerCheck{URL: leaf.IssuingCertificateURL[0]}
	u, err := url.Parse(ic.URL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		ic.Problem = "not fetched: only http:// caIssuers URLs are fetched"
		return ic
	}
	ctx, cancel := context.WithTimeout(ctx, aiaTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ic.URL, nil)
	if err != nil {
		ic.Problem = err.Error()
		return ic
	}
	resp, err := aiaClient(reach).Do(req)
	if err != nil {
		var refused *AIAAddressError
		if errors.As(err, &refused) {
			ic.Problem = refused.Error()
		} else {
			ic.Problem = err.Error()
		}
		return ic
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		loc := resp.Header.Get("Location")
		if len(loc) > 200 {
			loc = loc[:200] + "..."
		}
		ic.Problem = fmt.Sprintf("HTTP %s redirects to %q; redirects are not followed (the URL in the certificate must serve the issuer itself)", resp.Status, loc)
		return ic
	}
	if resp.StatusCode != http.StatusOK {
		ic.Problem = "HTTP " + resp.Status
		return ic
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerBytes+1))
	if err != nil {
		ic.Problem = err.Error()
		return ic
	}
	if len(raw) > maxIssuerBytes {
		ic.Problem = fmt.Sprintf("the answer is larger than %d KiB; not a certificate", maxIssuerBytes>>10)
		return ic
	}
	if b, _ := pem.Decode(raw); b != nil {
		raw = b.Bytes
	}
	issuer, err := x509.ParseCertificate(raw)
	if err != nil {
		ic.Problem = fmt.Sprintf("not a certificate: %v", err)
		return ic
	}
	ic.Subject = issuer.Subject.String()
	if leaf.CheckSignatureFrom(issuer) != nil {
		ic.Problem = "the certificate at that URL did not issue the server's certificate"
		return ic
	}
	ic.Found = true
	if clock == nil {
		clock = time.Now
	}
	opts := x509.VerifyOptions{Roots: d.Roots, Intermediates: x509.NewCertPool(), CurrentTime: clock(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, c := range append(sent[1:], issuer) {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err == nil {
		ic.Completes = true
	} else {
		ic.Problem = "even with it the chain does not verify: " + err.Error()
	}
	return ic
}
