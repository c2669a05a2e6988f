package mx

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/dnsx"
	"tlsrelay/relay/mtasts"
)

// DialFunc opens a TCP connection to an address.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Setup is what a Planner is made from: the [dns] table, the spool's
// MTA-STS cache, the WebPKI roots (nil: the system's; a destination's
// ca_file otherwise) and how to dial (nil: net.Dialer; tests map
// addresses to loopback listeners).
type Setup struct {
	Resolver string
	TrustAD  bool
	Timeout  time.Duration
	CacheDir string
	Roots    *x509.CertPool
	Dial     DialFunc
	Now      func() time.Time
	// AllowInternal lets mail exchangers and MTA-STS policy servers be
	// reached at internal addresses (policy.IsInternalAddress): [dns]
	// allow_internal_addresses.
	AllowInternal bool
}

// NewPlanner returns a Planner that asks s.Resolver and finds MTA-STS
// policies through the cache in s.CacheDir.
func NewPlanner(s Setup) *Planner {
	dns := &dnsx.Client{Server: s.Resolver, TrustAD: s.TrustAD, Timeout: s.Timeout}
	return &Planner{DNS: dns, AllowInternal: s.AllowInternal, STS: &mtasts.Agent{
		DNS:     dns,
		Cache:   &mtasts.Cache{Dir: s.CacheDir},
		Now:     s.Now,
		Fetcher: &mtasts.Fetcher{Roots: s.Roots, Timeout: s.Timeout, Dial: ResolvingDial(dns, s.Dial, s.AllowInternal, "the MTA-STS policy server")},
	}}
}

// InternalAddressError refuses a host of the recipient's domain (a mail
// exchanger, an MTA-STS policy server) whose address is internal
// (policy.IsInternalAddress): DNS must not steer the relay to this
// machine, its network or a cloud metadata service.
type InternalAddressError struct {
	// What names the host's role, e.g. "the mail exchanger".
	What string
	Host string
	Addr netip.Addr
}

func (e *InternalAddressError) Error() string {
	return fmt.Sprintf("%s %s resolves to %s, an internal address; refused (set [dns] allow_internal_addresses to allow)", e.What, e.Host, e.Addr)
}

// ResolvingDial connects to host:port, finding host's addresses with dns
// (never the system's resolver), trying each in turn. Unless
// allowInternal, an internal address is not dialed
// (InternalAddressError, which names the host as what, e.g. "the MTA-STS
// policy server").
func ResolvingDial(dns dnsx.Resolver, dial DialFunc, allowInternal bool, what string) DialFunc {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		addrs, err := dns.Addrs(ctx, host)
		if err != nil {
			return nil, err
		}
		if len(addrs.IPs) == 0 {
			return nil, fmt.Errorf("%s has no address", host)
		}
		var errs []error
		for _, ip := range addrs.IPs {
			if !allowInternal && policy.IsInternalAddress(ip) {
				errs = append(errs, &InternalAddressError{What: what, Host: host, Addr: ip})
				continue
			}
			c, err := dial(ctx, "tcp", net.JoinHostPort(ip.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}
