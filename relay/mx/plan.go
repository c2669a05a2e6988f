// Package mx decides how mail for one recipient domain goes straight to
// the domain's mail exchangers (upstream = "mx"): which MX hosts may be
// tried, in which order, and what each must prove — DANE (RFC 7672), the
// domain's MTA-STS policy (RFC 8461), or a WebPKI certificate for its
// name — at the level the destination requires (mx_security). It never
// settles for unverified TLS or plaintext.
package mx

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"tlsrelay/policy"
	"tlsrelay/relay/dnsx"
	"tlsrelay/relay/mtasts"
	"tlsrelay/relay/tlsrpt"
)

// Planner makes Plans.
type Planner struct {
	DNS dnsx.Resolver
	// STS finds MTA-STS policies; nil: none is looked up.
	STS *mtasts.Agent
	// Shuffle orders mail exchangers of equal preference (default: at
	// random, RFC 5321 §5.1).
	Shuffle func([]dnsx.MX)
	// RelaxSTS is set for a message with the header "TLS-Required: No"
	// (RFC 8689 §5): MTA-STS no longer excludes hosts or requires a
	// policy, and such hosts are judged by verify. DANE is never relaxed,
	// nor verify itself: tlsrelay never uses unverified TLS.
	RelaxSTS bool
	// AllowInternal keeps the internal addresses of mail exchangers
	// (policy.IsInternalAddress); by default they are not tried, and a
	// host with no other address is a failure (InternalAddressError).
	AllowInternal bool
}

// Plan is how one recipient domain's mail may go.
type Plan struct {
	Domain string
	Level  policy.MXSecurity
	MX     dnsx.MXSet
	// STS is the domain's MTA-STS policy in force (its Policy is nil when
	// there is none), when it was looked up.
	STS *mtasts.Result
	// Hosts are the mail exchangers in the order to try them.
	Hosts []Host
	// Failure is set when no host can be tried at all: the domain does not
	// exist, has a null MX, its MX lookup failed, or it lacks what the
	// level requires.
	Failure *policy.Failure
}

// Host is one mail exchanger and what a connection to it must prove.
type Host struct {
	Name  string
	Pref  uint16
	Addrs []netip.Addr
	// Auth is what the connection must prove (policy.Destination.ForMX).
	Auth policy.MXHost
	// Policy is the TLS-RPT description of the policy the host is judged
	// under.
	Policy tlsrpt.PolicyDesc
	// SecureMX: the host was found securely, by a DNSSEC-validated MX
	// lookup or by matching the domain's MTA-STS policy; only such a host
	// may receive a REQUIRETLS message (RFC 8689 §4.2.1).
	SecureMX bool
	// Failure is set when the host cannot be tried: skipped by MTA-STS, no
	// address, a failed TLSA lookup, DANE required and absent.
	Failure *policy.Failure
	// Problem is a policy failure that is recorded (log, TLS-RPT) while
	// the host is tried all the same: it does not match an MTA-STS policy
	// in testing mode.
	Problem *policy.Failure
}

func hostFailure(host string, class policy.Class, result policy.ResultType, detail, fix string, err error) *policy.Failure {
	return &policy.Failure{Class: class, Host: host + ":" + policy.MXPort, Detail: detail, Fix: fix, Result: result, Err: err}
}

// Plan looks up domain's mail exchangers and decides, for each, what it
// must prove under level.
func (p *Planner) Plan(ctx context.Context, domain string, level policy.MXSecurity) *Plan {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	plan := &Plan{Domain: domain, Level: level}
	set, err := p.DNS.MX(ctx, domain)
	plan.MX = set
	switch {
	case dnsx.NotFound(err):
		plan.Failure = &policy.Failure{Class: policy.NoSuchDomain, Host: domain, Permanent: true, Err: err,
			Detail: fmt.Sprintf("the recipient domain %s does not exist (DNS answered NXDOMAIN)", domain),
			Fix:    "check the recipient's address for a typing mistake"}
		return plan
	case err != nil:
		plan.Failure = &policy.Failure{Class: policy.DNS, Host: domain, Err: err,
			Detail: fmt.Sprintf("the MX lookup of %s failed: %v", domain, err),
			Fix:    "check that the resolver in [dns] answers (and validates: a DNSSEC failure looks like SERVFAIL); the relay will retry"}
		return plan
	case set.Null:
		plan.Failure = &policy.Failure{Class: policy.NullMX, Host: domain, Permanent: true,
			Detail: fmt.Sprintf("%s has a null MX record: it accepts no mail (RFC 7505)", domain),
			Fix:    "the recipient's domain does not receive mail; use another address"}
		return plan
	}
	if p.STS != nil && (level == policy.DANEOrSTS || level == policy.STSOnly) {
		r, err := p.STS.Lookup(ctx, domain)
		_ = err // a policy that could not be cached is still in force
		plan.STS = &r
	}
	if level == policy.STSOnly && (plan.STS == nil || plan.STS.Policy == nil) && !p.RelaxSTS {
		result, why := policy.ResultSTSFetchError, "publishes no MTA-STS policy"
		if plan.STS != nil && plan.STS.Problem != nil {
			result, why = plan.STS.Problem.Result, "has an MTA-STS record, but its policy could not be had: "+plan.STS.Problem.Err.Error()
		}
		plan.Failure = &policy.Failure{Class: policy.MXSecurityFailure, Host: domain, Result: result,
			Detail: fmt.Sprintf("mx_security = \"sts\" requires an MTA-STS policy, and %s %s", domain, why),
			Fix:    "the domain must publish an MTA-STS policy (RFC 8461), or this destination must use mx_security = \"dane-or-sts\" or \"verify\""}
		return plan
	}
	hosts := append([]dnsx.MX(nil), set.Hosts...)
	p.shuffle(hosts)
	for _, m := range hosts {
		plan.Hosts = append(plan.Hosts, p.host(ctx, plan, m))
	}
	return plan
}

// shuffle puts mail exchangers of equal preference in random order.
func (p *Planner) shuffle(hosts []dnsx.MX) {
	for i := 0; i < len(hosts); {
		j := i
		for j < len(hosts) && hosts[j].Pref == hosts[i].Pref {
			j++
		}
		if p.Shuffle != nil {
			p.Shuffle(hosts[i:j])
		} else {
			rand.Shuffle(j-i, func(a, b int) { hosts[i+a], hosts[i+b] = hosts[i+b], hosts[i+a] })
		}
		i = j
	}
}

func (p *Planner) host(ctx context.Context, plan *Plan, m dnsx.MX) Host {
	h := Host{Name: m.Host, Pref: m.Pref, Auth: policy.MXHost{Name: m.Host, Base: m.Host, Domain: plan.Domain}}
	h.Policy = tlsrpt.PolicyDesc{Type: tlsrpt.NoPolicyFound}
	addrs, err := p.DNS.Addrs(ctx, m.Host)
	if err != nil || len(addrs.IPs) == 0 {
		if err == nil {
			err = fmt.Errorf("%s has no A or AAAA record", m.Host)
		}
		h.Failure = hostFailure(m.Host, policy.DNS, "", fmt.Sprintf("the address of mail exchanger %s cannot be found: %v", m.Host, err),
			"the domain's MX record names a host without an address, or the resolver failed; the relay tries the other mail exchangers and retries", err)
		return h
	}
	h.Addrs = addrs.IPs
	if !p.AllowInternal {
		h.Addrs = nil
		var refused *InternalAddressError
		for _, ip := range addrs.IPs {
			if policy.IsInternalAddress(ip) {
				if refused == nil {
					refused = &InternalAddressError{What: "the mail exchanger", Host: m.Host, Addr: ip}
				}
				continue
			}
			h.Addrs = append(h.Addrs, ip)
		}
		if len(h.Addrs) == 0 {
			h.Failure = hostFailure(m.Host, policy.DNS, "", refused.Error(),
				"the recipient's domain names a mail exchanger on a loopback, private or link-local address: a mistake of its DNS, or an attempt to reach this relay's own network; if such mail exchangers are meant to be used (a relay inside a private network), set [dns] allow_internal_addresses = true", refused)
			return h
		}
	}
	level := plan.Level

	// DANE: only over a DNSSEC-validated MX set and address lookup.
	if level == policy.DANEOrSTS || level == policy.DANEOnly {
		if plan.MX.Secure && addrs.Secure {
			if f := p.dane(ctx, &h, addrs); f != nil {
				h.Failure = f
				return h
			}
		}
		if h.Auth.DANE {
			h.SecureMX = true
			return h
		}
		if level == policy.DANEOnly {
			why := "its MX records are not DNSSEC-signed"
			switch {
			case plan.MX.Secure && !addrs.Secure:
				why = "its address records are not DNSSEC-signed"
			case plan.MX.Secure:
				why = "it publishes no DNSSEC-validated TLSA record at _25._tcp." + h.Auth.Base
			}
			h.Failure = hostFailure(m.Host, policy.MXSecurityFailure, policy.ResultDANERequired,
				fmt.Sprintf("mx_security = \"dane\" requires DANE, and mail exchanger %s of %s cannot use it: %s", m.Host, plan.Domain, why),
				"the domain must sign its zone with DNSSEC and publish TLSA records for its mail exchangers, or this destination must use mx_security = \"dane-or-sts\"", nil)
			return h
		}
	}
	h.SecureMX = plan.MX.Secure
	if sts := plan.STS; sts != nil && sts.Policy != nil {
		pol := sts.Policy
		h.Policy = tlsrpt.PolicyDesc{Type: tlsrpt.STS, String: strings.Split(strings.TrimSpace(strings.ReplaceAll(pol.String(), "\r", "")), "\n"), MXHost: pol.MX}
		if pol.Matches(m.Host) {
			h.SecureMX = true
			return h
		}
		f := hostFailure(m.Host, policy.MXSecurityFailure, policy.ResultValidationFailure,
			fmt.Sprintf("mail exchanger %s is not among those of %s's MTA-STS policy (id %s, mode %s): %s", m.Host, plan.Domain, sts.ID, pol.Mode, strings.Join(pol.MX, ", ")),
			"the domain's MX records and its MTA-STS policy disagree: its operator must add the host to the policy's mx lines (and change the id), or the MX record was forged", nil)
		if pol.Mode == mtasts.Enforce && !p.RelaxSTS {
			h.Failure = f
			return h
		}
		h.Problem = f // testing (or TLS-Required: No): recorded, and delivery proceeds under verify
	}
	return h
}

// dane looks up the host's TLSA records (at the TLSA base domain, where
// the address's secure CNAMEs led, then at the MX name) and sets h.Auth
// for DANE when there are validated ones. A failed lookup is a failure:
// a secure host whose TLSA records cannot be had is not tried with
// anything weaker (RFC 7672 §2.2).
func (p *Planner) dane(ctx context.Context, h *Host, addrs dnsx.Addrs) *policy.Failure {
	bases := []string{addrs.Name}
	if addrs.Name != h.Name {
		bases = append(bases, h.Name)
	}
	for _, base := range bases {
		name := "_" + policy.MXPort + "._tcp." + base
		set, err := p.DNS.TLSA(ctx, name)
		if err != nil {
			return hostFailure(h.Name, policy.DNS, policy.ResultDNSSECInvalid,
				fmt.Sprintf("the TLSA lookup of %s failed (%v): mail exchanger %s is in a signed zone, so DANE cannot be ruled out, and nothing weaker is tried", name, err, h.Name),
				"the domain's DNSSEC may be broken (expired signatures, a bad delegation) or the resolver failed; the relay retries", err)
		}
		if len(set.Records) > 0 && set.Secure {
			h.Auth.DANE, h.Auth.TLSA, h.Auth.TLSAName, h.Auth.Base = true, set.Records, name, base
			strs := make([]string, len(set.Records))
			for i, r := range set.Records {
				strs[i] = r.String()
			}
			h.Policy = tlsrpt.PolicyDesc{Type: tlsrpt.TLSA, String: strs}
			return nil
		}
	}
	return nil
}
