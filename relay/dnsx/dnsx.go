// Package dnsx asks a DNS resolver what MX delivery needs to know — MX,
// A/AAAA, TXT and TLSA records — and says of each answer whether it was
// DNSSEC-validated: the resolver's AD bit, trusted only from a resolver
// on this machine's loopback or when the operator says so (RFC 6698
// A.3). CNAMEs are followed. github.com/miekg/dns stays inside this
// package: callers see the Resolver interface and plain values.
package dnsx

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"tlsrelay/policy"
)

// Resolver is what MX delivery asks of DNS. Every answer says whether it
// is Secure (DNSSEC-validated by a trusted resolver).
type Resolver interface {
	// MX returns domain's mail exchangers: its MX records by preference,
	// the implicit MX (the domain itself) when it has none, or Null for a
	// null MX (RFC 7505). A domain that does not exist is an *Error with
	// NotFound.
	MX(ctx context.Context, domain string) (MXSet, error)
	// Addrs returns host's IPv4 and IPv6 addresses.
	Addrs(ctx context.Context, host string) (Addrs, error)
	// TXT returns the TXT records at name, each record's strings joined.
	TXT(ctx context.Context, name string) (TXT, error)
	// TLSA returns the TLSA records at name (e.g. _25._tcp.mx.example.com);
	// none when there are none (NXDOMAIN or no data).
	TLSA(ctx context.Context, name string) (TLSASet, error)
}

// MX is one mail exchanger.
type MX struct {
	Host string // lower case, no trailing dot
	Pref uint16
}

// MXSet is the answer to an MX lookup.
type MXSet struct {
	Domain string
	Hosts  []MX // by preference, lowest first; empty for a null MX
	// Implicit: the domain has no MX records, so the domain itself is
	// its mail exchanger (RFC 5321 §5.1).
	Implicit bool
	// Null: the domain says it accepts no mail (RFC 7505).
	Null   bool
	Secure bool
}

// Addrs is the answer to an address lookup.
type Addrs struct {
	Host string
	// Name is where CNAMEs led (Host when there were none).
	Name   string
	IPs    []netip.Addr
	Secure bool
}

// TXT is the answer to a TXT lookup.
type TXT struct {
	Records []string
	Secure  bool
}

// TLSASet is the answer to a TLSA lookup.
type TLSASet struct {
	Name    string
	Records []policy.TLSA
	Secure  bool
}

// Error is a failed lookup.
type Error struct {
	Name  string
	Type  string // "MX", "A", …
	Rcode int    // the resolver's answer code, or -1 when there was none
	// Secure is set for an NXDOMAIN that was DNSSEC-validated.
	Secure bool
	Err    error // the transport's error, if any
}

func (e *Error) Error() string {
	switch {
	case e.Err != nil:
		return fmt.Sprintf("DNS lookup of %s %s failed: %v", e.Name, e.Type, e.Err)
	case e.NotFound():
		return fmt.Sprintf("DNS: %s does not exist (NXDOMAIN, looking up %s)", e.Name, e.Type)
	}
	return fmt.Sprintf("DNS lookup of %s %s failed: the resolver answered %s", e.Name, e.Type, dns.RcodeToString[e.Rcode])
}

func (e *Error) Unwrap() error { return e.Err }

// NotFound reports whether the name does not exist (NXDOMAIN).
func (e *Error) NotFound() bool { return e.Rcode == dns.RcodeNameError }

// NotFound reports whether err is a lookup that found the name does not
// exist.
func NotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.NotFound()
}

// Client is a Resolver that asks one DNS server.
type Client struct {
	// Server is the resolver's address, host:port.
	Server string
	// TrustAD trusts the AD bit from a resolver that is not on loopback
	// (the operator vouches for the path to it).
	TrustAD bool
	// Timeout bounds each query (default 5 s).
	Timeout time.Duration
}

// Trusted reports whether the AD bit of the server's answers is believed:
// the server is on loopback, or TrustAD is set.
func (c *Client) Trusted() bool { return c.TrustAD || IsLoopback(c.Server) }

// IsLoopback reports whether addr (host:port or host) is a loopback IP.
func IsLoopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// maxCNAMEs bounds a CNAME chain.
const maxCNAMEs = 8

// query asks for name's records of type qtype, following CNAMEs. It
// returns the records, the name the chain ended at, and whether every
// answer on the way was validated. NXDOMAIN and server failures are an
// *Error; no records of that type (NODATA) is an empty answer.
func (c *Client) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, string, bool, error) {
	name = dns.Fqdn(strings.ToLower(name))
	secure := true
	for hop := 0; hop <= maxCNAMEs; hop++ {
		msg, err := c.exchange(ctx, name, qtype)
		if err != nil {
			return nil, "", false, &Error{Name: trim(name), Type: dns.TypeToString[qtype], Rcode: -1, Err: err}
		}
		secure = secure && msg.AuthenticatedData && c.Trusted()
		if msg.Rcode != dns.RcodeSuccess {
			return nil, trim(name), secure, &Error{Name: trim(name), Type: dns.TypeToString[qtype], Rcode: msg.Rcode, Secure: secure}
		}
		cur := name
		var out []dns.RR
		for seen := 0; seen <= maxCNAMEs; seen++ {
			next := ""
			for _, rr := range msg.Answer {
				h := rr.Header()
				if !strings.EqualFold(h.Name, cur) || h.Class != dns.ClassINET {
					continue
				}
				if h.Rrtype == qtype {
					out = append(out, rr)
				} else if cn, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
					next = strings.ToLower(cn.Target)
				}
			}
			if len(out) > 0 || next == "" {
				break
			}
			cur = next
		}
		if len(out) > 0 || cur == name {
			return out, trim(cur), secure, nil
		}
		name = cur // the answer stopped at a CNAME: ask for its target
	}
	return nil, "", false, &Error{Name: trim(name), Type: dns.TypeToString[qtype], Rcode: -1, Err: fmt.Errorf("more than %d CNAMEs in a row", maxCNAMEs)}
}

func (c *Client) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true // ask for the AD bit (RFC 6840 §5.7)
	m.SetEdns0(1232, true)
	cl := &dns.Client{Net: "udp", Timeout: timeout}
	r, _, err := cl.ExchangeContext(ctx, m, c.Server)
	if err == nil && r.Truncated {
		cl.Net = "tcp"
		r, _, err = cl.ExchangeContext(ctx, m, c.Server)
	}
	if err != nil {
		return nil, err
	}
	if len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, name) || r.Question[0].Qtype != qtype {
		return nil, errors.New("the answer is for another question")
	}
	return r, nil
}

func trim(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") }

// MX implements Resolver.
func (c *Client) MX(ctx context.Context, domain string) (MXSet, error) {
	domain = trim(domain)
	rrs, _, secure, err := c.query(ctx, domain, dns.TypeMX)
	set := MXSet{Domain: domain, Secure: secure}
	if err != nil {
		return set, err
	}
	dot := false
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		if mx.Mx == "." {
			dot = true
			continue
		}
		set.Hosts = append(set.Hosts, MX{Host: trim(mx.Mx), Pref: mx.Preference})
	}
	switch {
	case len(set.Hosts) == 0 && dot:
		set.Null = true
	case len(rrs) == 0:
		set.Implicit = true
		set.Hosts = []MX{{Host: domain}}
	}
	slices.SortStableFunc(set.Hosts, func(a, b MX) int { return int(a.Pref) - int(b.Pref) })
	return set, nil
}

// Addrs implements Resolver: A and AAAA. It fails only when neither
// gave an address and one of them failed.
func (c *Client) Addrs(ctx context.Context, host string) (Addrs, error) {
	host = trim(host)
	out := Addrs{Host: host, Name: host, Secure: true}
	var firstErr error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, final, secure, err := c.query(ctx, host, qt)
		out.Secure = out.Secure && secure
		if err != nil {
			if firstErr == nil || NotFound(firstErr) {
				firstErr = err
			}
			continue
		}
		if final != "" {
			out.Name = final
		}
		for _, rr := range rrs {
			var ip net.IP
			switch a := rr.(type) {
			case *dns.A:
				ip = a.A
			case *dns.AAAA:
				ip = a.AAAA
			}
			if addr, ok := netip.AddrFromSlice(ip); ok {
				out.IPs = append(out.IPs, addr.Unmap())
			}
		}
	}
	if len(out.IPs) == 0 && firstErr != nil {
		return out, firstErr
	}
	return out, nil
}

// TXT implements Resolver.
func (c *Client) TXT(ctx context.Context, name string) (TXT, error) {
	rrs, _, secure, err := c.query(ctx, name, dns.TypeTXT)
	out := TXT{Secure: secure}
	if err != nil {
		return out, err
	}
	for _, rr := range rrs {
		out.Records = append(out.Records, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, nil
}

// TLSA implements Resolver. A name that does not exist has no records.
func (c *Client) TLSA(ctx context.Context, name string) (TLSASet, error) {
	rrs, final, secure, err := c.query(ctx, name, dns.TypeTLSA)
	out := TLSASet{Name: trim(name), Secure: secure}
	if final != "" {
		out.Name = final
	}
	if err != nil {
		if NotFound(err) {
			return out, nil
		}
		return out, err
	}
	for _, rr := range rrs {
		t := rr.(*dns.TLSA)
		data, herr := hex.DecodeString(t.Certificate)
		if herr != nil {
			// Malformed: kept as a record that matches nothing and is not
			// usable, so the set still makes TLS mandatory.
			out.Records = append(out.Records, policy.TLSA{Usage: 255})
			continue
		}
		out.Records = append(out.Records, policy.TLSA{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: data})
	}
	return out, nil
}
