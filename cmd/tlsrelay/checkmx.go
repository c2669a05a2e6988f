package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay"
	"tlsrelay/relay/config"
	"tlsrelay/relay/mx"
	"tlsrelay/relay/upstream"
)

// mxDialForTests, when set by a test, replaces the TCP dialing of the MX
// check (port 25 of MX hosts, port 443 of MTA-STS policy hosts) so that
// loopback servers stand in for them. Nil in the shipped binary.
var mxDialForTests mx.DialFunc

// mxCheck is the result of `tlsrelay check` for a destination with
// upstream = "mx", in the shape of its JSON.
type mxCheck struct {
	Domain     string         `json:"domain"`
	PolicyFrom string         `json:"policy_from"`
	MXSecurity string         `json:"mx_security"`
	Resolver   string         `json:"resolver"`
	MXDNSSEC   bool           `json:"mx_dnssec"`
	ImplicitMX bool           `json:"implicit_mx,omitempty"`
	NullMX     bool           `json:"null_mx,omitempty"`
	STS        *mxCheckSTS    `json:"mta_sts,omitempty"`
	Hosts      []*mxCheckHost `json:"hosts"`
	Verdict    string         `json:"verdict"` // "ok" or "fail"
	Class      string         `json:"class,omitempty"`
	TLSRPT     string         `json:"tlsrpt_result,omitempty"`
	Detail     string         `json:"detail,omitempty"`
	Fix        string         `json:"fix,omitempty"`
	ExitCode   int            `json:"exit_code"`
}

// mxCheckSTS is the domain's MTA-STS policy in force.
type mxCheckSTS struct {
	ID              string    `json:"id,omitempty"`
	Mode            string    `json:"mode,omitempty"`
	MaxAgeSeconds   int64     `json:"max_age,omitempty"`
	MX              []string  `json:"mx,omitempty"`
	Fetched         time.Time `json:"fetched,omitzero"`
	CacheAgeSeconds int64     `json:"cache_age_seconds"`
	FromCache       bool      `json:"from_cache"`
	Problem         string    `json:"problem,omitempty"`
	ProblemResult   string    `json:"problem_tlsrpt_result,omitempty"`
}

// mxCheckHost is one mail exchanger: what it must prove, and the TLS
// check of each of its addresses.
type mxCheckHost struct {
	Name      string   `json:"name"`
	Pref      uint16   `json:"preference"`
	Addresses []string `json:"addresses,omitempty"`
	// Security is what delivery requires of it: dane, mta-sts, verify, or
	// "not tried".
	Security string          `json:"security"`
	TLSAName string          `json:"tlsa_name,omitempty"`
	TLSA     []string        `json:"tlsa,omitempty"`
	SecureMX bool            `json:"found_securely"`
	Skipped  *mxCheckFailure `json:"not_tried,omitempty"`
	Problem  *mxCheckFailure `json:"recorded_problem,omitempty"`
	Checks   []*checkReport  `json:"checks,omitempty"`
}

type mxCheckFailure struct {
	Class  string `json:"class"`
	TLSRPT string `json:"tlsrpt_result,omitempty"`
	Detail string `json:"detail"`
	Fix    string `json:"fix"`
}

func checkFailure(f *policy.Failure) *mxCheckFailure {
	return &mxCheckFailure{Class: string(f.Class), TLSRPT: string(f.RPT()), Detail: f.Detail, Fix: f.Fix}
}

// checkMX plans delivery to domain's mail exchangers as the relay would
// and probes each address of each host that would be tried; it sends
// nothing but EHLO. The MTA-STS cache is the relay's (in the spool
// directory), so its age is shown and a fetched policy is cached.
func checkMX(cfg *config.Config, dest *policy.Destination, domain, from string, timeout time.Duration, asJSON bool, stdout io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	planner := mx.NewPlanner(mx.Setup{Resolver: cfg.DNS.Resolver, TrustAD: cfg.DNS.TrustAD, Timeout: timeout,
		CacheDir: relay.MTASTSCacheDir(cfg.Queue.Dir), Roots: dest.Roots, Dial: mxDialForTests, Now: time.Now,
		AllowInternal: cfg.DNS.AllowInternalAddresses})
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	plan := planner.Plan(ctx, domain, dest.MXSecurity)
	rep := &mxCheck{Domain: domain, PolicyFrom: from, MXSecurity: string(dest.MXSecurity), Resolver: cfg.DNS.Resolver,
		MXDNSSEC: plan.MX.Secure, ImplicitMX: plan.MX.Implicit, NullMX: plan.MX.Null, Verdict: "ok"}
	if s := plan.STS; s != nil && (s.Policy != nil || s.Problem != nil || s.ID != "") {
		st := &mxCheckSTS{ID: s.ID, Fetched: s.Fetched, FromCache: s.FromCache}
		if s.Policy != nil {
			st.Mode, st.MaxAgeSeconds, st.MX = string(s.Policy.Mode), int64(s.Policy.MaxAge/time.Second), s.Policy.MX
			st.CacheAgeSeconds = int64(time.Since(s.Fetched) / time.Second)
		}
		if s.Problem != nil {
			st.Problem, st.ProblemResult = s.Problem.Err.Error(), string(s.Problem.Result)
		}
		rep.STS = st
	}
	var worst *policy.Failure
	note := func(f *policy.Failure) {
		if worst == nil || f.Class != policy.Connect && f.Class != policy.DNS || worst.Class == policy.Connect || worst.Class == policy.DNS {
			worst = f
		}
	}
	ok := false
	dialer := &upstream.Dialer{LocalName: cfg.Server.Hostname, Timeout: timeout, DialContext: mxDialForTests}
	for _, h := range plan.Hosts {
		hr := &mxCheckHost{Name: h.Name, Pref: h.Pref, SecureMX: h.SecureMX, Security: mxSecurityOf(h)}
		for _, ip := range h.Addrs {
			hr.Addresses = append(hr.Addresses, ip.String())
		}
		if h.Auth.DANE {
			hr.TLSAName = h.Auth.TLSAName
			for _, r := range h.Auth.TLSA {
				hr.TLSA = append(hr.TLSA, r.String())
			}
		}
		rep.Hosts = append(rep.Hosts, hr)
		if h.Failure != nil {
			hr.Security, hr.Skipped = "not tried", checkFailure(h.Failure)
			note(h.Failure)
			continue
		}
		if h.Problem != nil {
			hr.Problem = checkFailure(h.Problem)
		}
		for _, ip := range h.Addrs {
			hd := dest.ForMX(h.Auth, net.JoinHostPort(ip.String(), policy.MXPort))
			cr := newCheckReport(dialer.Probe(ctx, hd), "mail exchanger "+h.Name+" of "+domain)
			hr.Checks = append(hr.Checks, cr)
			if cr.Verdict == "ok" {
				ok = true
				continue
			}
			note(&policy.Failure{Class: policy.Class(cr.Class), Detail: cr.Detail, Fix: cr.Fix})
		}
	}
	if f := plan.Failure; f != nil {
		worst = f
	}
	switch {
	case ok && plan.Failure == nil:
	case worst == nil:
		rep.Verdict, rep.Class, rep.Detail, rep.Fix, rep.ExitCode = "fail", string(policy.DNS), "no mail exchanger could be tried", "check the resolver", checkNoConnect
	default:
		rep.Verdict, rep.Class, rep.TLSRPT, rep.Detail, rep.Fix = "fail", string(worst.Class), string(worst.RPT()), worst.Detail, worst.Fix
		rep.ExitCode = checkTLSFailure
		if worst.Class == policy.Connect || worst.Class == policy.DNS {
			rep.ExitCode = checkNoConnect
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		rep.writeText(stdout)
	}
	return rep.ExitCode
}

// mxSecurityOf names what a host must prove.
func mxSecurityOf(h mx.Host) string {
	switch {
	case h.Auth.DANE:
		return "dane"
	case h.Policy.Type == "sts" && h.Problem == nil:
		return "mta-sts"
	}
	return "verify"
}

func (r *mxCheck) writeText(w io.Writer) {
	line := func(k, format string, a ...any) {
		if k != "" {
			k += ":"
		}
		fmt.Fprintf(w, "%-14s %s\n", k, fmt.Sprintf(format, a...))
	}
	line("domain", "%s (%s)", r.Domain, r.PolicyFrom)
	line("mx_security", "%s", r.MXSecurity)
	dnssec := "NOT DNSSEC-validated"
	if r.MXDNSSEC {
		dnssec = "DNSSEC-validated"
	}
	switch {
	case r.NullMX:
		line("MX", "null MX: the domain accepts no mail (%s, resolver %s)", dnssec, r.Resolver)
	case r.ImplicitMX:
		line("MX", "none: the domain itself (implicit MX) (%s, resolver %s)", dnssec, r.Resolver)
	default:
		line("MX", "%d host(s) (%s, resolver %s)", len(r.Hosts), dnssec, r.Resolver)
	}
	switch s := r.STS; {
	case s == nil:
		line("MTA-STS", "no policy published")
	case s.Mode != "":
		src := "fetched now"
		if s.FromCache {
			src = fmt.Sprintf("from the cache, fetched %s (%ds ago)", s.Fetched.UTC().Format("2006-01-02 15:04:05 UTC"), s.CacheAgeSeconds)
		}
		line("MTA-STS", "id %s, mode %s, max_age %d, mx %s; %s", s.ID, s.Mode, s.MaxAgeSeconds, strings.Join(s.MX, ", "), src)
		if s.Problem != "" {
			line("", "refetch failed (%s): %s", s.ProblemResult, s.Problem)
		}
	default:
		line("MTA-STS", "no policy in force: %s (%s)", s.Problem, s.ProblemResult)
	}
	for _, h := range r.Hosts {
		fmt.Fprintf(w, "host %s (preference %d): %s\n", h.Name, h.Pref, strings.Join(h.Addresses, ", "))
		var ind strings.Builder
		fmt.Fprintf(&ind, "%-14s %s (found securely for REQUIRETLS: %v)\n", "security:", h.Security, h.SecureMX)
		if h.TLSAName != "" {
			fmt.Fprintf(&ind, "%-14s %s: %s (DNSSEC-validated)\n", "TLSA:", h.TLSAName, strings.Join(h.TLSA, "; "))
		}
		if s := h.Skipped; s != nil {
			fmt.Fprintf(&ind, "%-14s %s (%s): %s\n", "not tried:", s.Class, s.TLSRPT, s.Detail)
			fmt.Fprintf(&ind, "%-14s %s\n", "fix:", s.Fix)
		}
		if p := h.Problem; p != nil {
			fmt.Fprintf(&ind, "%-14s %s (%s): %s\n", "recorded:", p.Class, p.TLSRPT, p.Detail)
		}
		for _, c := range h.Checks {
			c.writeText(&ind)
		}
		io.WriteString(w, indent(ind.String()))
	}
	if r.Verdict == "ok" {
		line("verdict", "OK: mail for %s would go to a mail exchanger over verified TLS", r.Domain)
		return
	}
	line("verdict", "FAIL failure=%s (tlsrpt %s): %s", r.Class, r.TLSRPT, r.Detail)
	line("fix", "%s", r.Fix)
}
