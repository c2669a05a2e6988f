package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/config"
	"tlsrelay/relay/oauth"
	"tlsrelay/relay/upstream"
)

// Exit statuses of `tlsrelay check`.
const (
	checkOK         = 0
	checkTLSFailure = 1
	checkUsage      = 2
	checkNoConnect  = 3
	checkLogin      = 4
)

// listFlag collects a flag given several times.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage:
  tlsrelay check -config FILE [-auth] DOMAIN
                                         probe the upstream the policy gives DOMAIN, with exactly that policy
  tlsrelay check [flags] HOST:PORT       probe an upstream without a configuration

It connects, starts TLS, verifies it, says EHLO, and reports; it never sends
MAIL, RCPT or DATA. Only with -auth does it log in: it then obtains the
destination's OAuth token (or uses its password), authenticates over the
verified TLS, and says QUIT.
Exit status: 0 verified, 1 TLS failure (class in the output), 2 usage or
configuration error, 3 could not connect (or the server broke off before TLS),
4 the login failed (-auth; class oauth_token or auth).

Flags:
`)
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "", "configuration `file`; the argument is then a recipient domain")
	starttls := fs.Bool("starttls", false, "plain connect then STARTTLS (the default, except on port 465)")
	implicit := fs.Bool("implicit", false, "TLS from the first byte (port 465 style)")
	caFile := fs.String("ca-file", "", "trust only the CAs in this PEM `file` (default: system roots)")
	minTLS := fs.String("min-tls", "1.2", "minimum TLS `version`: 1.2 or 1.3")
	var hostnames, pins listFlag
	fs.Var(&hostnames, "hostname", "the certificate must be valid for this `name` (repeatable; .example.com = any subdomain)")
	serverName := fs.String("servername", "", "SNI `name` (default: the host)")
	fs.Var(&pins, "pin", "require this SPKI `pin` (base64 SHA-256; repeatable)")
	asJSON := fs.Bool("json", false, "print one JSON object instead of text")
	withAuth := fs.Bool("auth", false, "after the TLS check, obtain a token and log in (needs -config); never sends MAIL")
	timeout := fs.Duration("timeout", 20*time.Second, "give up after this `duration`")
	if err := parseInterspersed(fs, args); err != nil {
		return checkUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "tlsrelay check: give exactly one DOMAIN (with -config) or HOST:PORT")
		fs.Usage()
		return checkUsage
	}
	target := fs.Arg(0)

	var dest *policy.Destination
	var from string
	localName, _ := os.Hostname()
	if *withAuth && *cfgPath == "" {
		fmt.Fprintln(stderr, "tlsrelay check: -auth needs -config (the login comes from the destination's policy)")
		return checkUsage
	}
	if *cfgPath != "" {
		if *starttls || *implicit || *caFile != "" || len(hostnames) > 0 || len(pins) > 0 || *serverName != "" {
			fmt.Fprintln(stderr, "tlsrelay check: with -config the policy comes from the file; policy flags are not allowed")
			return checkUsage
		}
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintln(stderr, "tlsrelay check: configuration not loaded:", err)
			return checkUsage
		}
		dest = cfg.Table.Lookup(target)
		if dest == nil {
			fmt.Fprintf(stderr, "tlsrelay check: no [[destination]] in %s claims %q; the relay would refuse its mail (550 5.7.1)\n", *cfgPath, target)
			return checkUsage
		}
		from = fmt.Sprintf("destination %s from %s", dest.Name(), *cfgPath)
		localName = cfg.Server.Hostname
	} else {
		if *starttls && *implicit {
			fmt.Fprintln(stderr, "tlsrelay check: -starttls and -implicit exclude each other")
			return checkUsage
		}
		_, port, err := net.SplitHostPort(target)
		if err != nil {
			fmt.Fprintf(stderr, "tlsrelay check: %q is not host:port (or give -config FILE and a domain)\n", target)
			return checkUsage
		}
		mode := "starttls"
		if *implicit || !*starttls && port == "465" {
			mode = "implicit"
		}
		d, err := policy.Compile(policy.Spec{Domains: []string{"*"}, Upstream: target, TLS: mode, MinTLS: *minTLS,
			CAFile: *caFile, PinSHA256: pins, RequireHostname: hostnames, ServerName: *serverName})
		if err != nil {
			fmt.Fprintln(stderr, "tlsrelay check:", strings.Replace(err.Error(), "_", "-", 1))
			return checkUsage
		}
		dest, from = d, "policy from the command line"
	}
	if localName == "" {
		localName = "localhost"
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	dialer := &upstream.Dialer{LocalName: localName, Timeout: *timeout}
	p := dialer.Probe(ctx, dest)
	if in := p.Inspection; in != nil && in.ChainClass == policy.IncompleteChain {
		// The caIssuers URL is the server's to choose: it may reach internal
		// addresses only when the upstream itself is at one.
		in.MissingIssuer = dest.FetchMissingIssuer(ctx, in.Sent, nil, policy.ReachFor(ctx, dest.Upstream))
	}
	rep := newCheckReport(p, from)
	if *withAuth && rep.Verdict == "ok" {
		dialer.Tokens = oauth.NewRegistry("")
		rep.checkLogin(dialer.ProbeAuth(ctx, dest))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		rep.writeText(stdout)
	}
	return rep.ExitCode
}

// checkReport is the result of `tlsrelay check`, in the shape of its JSON.
type checkReport struct {
	Upstream        string              `json:"upstream"`
	PolicyFrom      string              `json:"policy_from"`
	Mode            string              `json:"tls_mode"`
	MinTLS          string              `json:"min_tls"`
	Connected       bool                `json:"connected"`
	Greeting        string              `json:"greeting,omitempty"`
	EHLOPlain       []string            `json:"ehlo_plain,omitempty"`
	StartTLSOffered *bool               `json:"starttls_offered,omitempty"`
	TLS             *policy.Inspection  `json:"tls,omitempty"`
	EHLOTLS         []string            `json:"ehlo_tls,omitempty"`
	Verdict         string              `json:"verdict"` // "ok" or "fail"
	Class           string              `json:"class,omitempty"`
	Detail          string              `json:"detail,omitempty"`
	Fix             string              `json:"fix,omitempty"`
	Login           string              `json:"login,omitempty"` // -auth: "ok" or "failed"
	LoginAs         string              `json:"login_as,omitempty"`
	ExitCode        int                 `json:"exit_code"`
	dest            *policy.Destination `json:"-"`
}

func newCheckReport(p *upstream.Probe, from string) *checkReport {
	d := p.Dest
	r := &checkReport{
		Upstream: d.Upstream, PolicyFrom: from, Mode: string(d.Mode),
		MinTLS:    strings.TrimPrefix(tlsVersionName(d.MinTLS), "TLS "),
		Connected: p.Connected, Greeting: p.Greeting, EHLOPlain: p.PlainExtensions,
		TLS: p.Inspection, EHLOTLS: p.TLSExtensions, Verdict: "ok", dest: d,
	}
	if d.Mode == policy.StartTLS && p.Connected {
		offered := p.StartTLSOffered
		r.StartTLSOffered = &offered
	}
	if f := p.Failure; f != nil {
		r.Verdict, r.Class, r.Detail, r.Fix = "fail", string(f.Class), f.Detail, f.Fix
		switch {
		case f.Class.IsTLS():
			r.ExitCode = checkTLSFailure
		default:
			r.ExitCode = checkNoConnect
		}
	}
	return r
}

func (r *checkReport) writeText(w io.Writer) {
	line := func(k, format string, a ...any) {
		if k != "" {
			k += ":"
		}
		fmt.Fprintf(w, "%-14s %s\n", k, fmt.Sprintf(format, a...))
	}
	d := r.dest
	line("upstream", "%s (%s)", r.Upstream, r.PolicyFrom)
	trust := "system roots"
	if d.CAFile != "" {
		trust = "ca_file " + d.CAFile
	}
	pinText := "none"
	if len(d.Pins) > 0 {
		pinText = strings.Join(d.Pins, ", ")
	}
	line("policy", "tls=%s min_tls=%s trust=%s", d.Mode, r.MinTLS, trust)
	line("", "require_hostname=%s server_name=%s pins=%s", strings.Join(d.RequireHostname, ","), d.ServerName, pinText)
	if !r.Connected {
		line("connect", "FAILED")
	} else {
		line("connect", "ok")
	}
	if r.Greeting != "" {
		line("greeting", "%s", r.Greeting)
	}
	if len(r.EHLOPlain) > 0 {
		line("EHLO (plain)", "%s", strings.Join(r.EHLOPlain, ", "))
	}
	if r.StartTLSOffered != nil {
		if *r.StartTLSOffered {
			line("STARTTLS", "offered")
		} else {
			line("STARTTLS", "NOT offered")
		}
	}
	if in := r.TLS; in != nil {
		line("TLS", "%s, %s", in.Version, in.CipherSuite)
		fmt.Fprintf(w, "certificates sent by the server (%d):\n", len(in.Certificates))
		for i, c := range in.Certificates {
			fmt.Fprintf(w, "  [%d] subject    %s\n", i, c.Subject)
			fmt.Fprintf(w, "      issuer     %s\n", c.Issuer)
			fmt.Fprintf(w, "      names      %s\n", strings.Join(c.Names, ", "))
			fmt.Fprintf(w, "      valid      %s to %s (%s)\n", c.NotBefore.Format("2006-01-02 15:04 UTC"), c.NotAfter.Format("2006-01-02 15:04 UTC"), daysLeft(c.DaysLeft))
			fmt.Fprintf(w, "      pin_sha256 %s\n", c.PinSHA256)
			fmt.Fprintf(w, "      signature  %s, key %s\n", c.SignatureAlgorithm, c.PublicKey)
		}
		if in.ChainVerified {
			line("chain", "verified, to root %q (%s)", in.ChainRoot, in.ChainSource)
		} else {
			line("chain", "NOT verified (%s): %s: %s", in.ChainSource, in.ChainClass, in.ChainProblem)
		}
		if mi := in.MissingIssuer; mi != nil {
			switch {
			case mi.Completes:
				line("", "confirmed: %s serves %q, which completes the chain; the server must send it", mi.URL, mi.Subject)
			case mi.Found:
				line("", "%s serves the issuer %q, but %s", mi.URL, mi.Subject, mi.Problem)
			default:
				line("", "could not confirm from %s: %s", mi.URL, mi.Problem)
			}
		}
		if in.HostnameOK {
			line("hostname", "ok (%s)", strings.Join(in.HostnameWanted, ", "))
		} else {
			line("hostname", "MISMATCH: wanted %s", strings.Join(in.HostnameWanted, ", "))
		}
		switch {
		case in.PinOK == nil && len(in.PinsConfigured) == 0:
			line("pin", "not configured")
		case in.PinOK == nil:
			line("pin", "not checked (the chain did not verify)")
		case *in.PinOK:
			line("pin", "ok")
		default:
			line("pin", "MISMATCH")
		}
	}
	if len(r.EHLOTLS) > 0 {
		line("EHLO (TLS)", "%s", strings.Join(r.EHLOTLS, ", "))
	}
	if r.Login != "" {
		line("login", "%s as %s", r.Login, r.LoginAs)
	}
	if r.Verdict == "ok" {
		line("verdict", "OK: mail for this destination would be sent over verified %s", r.TLS.Version)
		return
	}
	label := "failure"
	if r.ExitCode == checkTLSFailure {
		label = "tls_failure"
	}
	line("verdict", "FAIL %s=%s: %s", label, r.Class, r.Detail)
	line("fix", "%s", r.Fix)
}

func daysLeft(n int) string {
	switch {
	case n < 0:
		return fmt.Sprintf("EXPIRED %d days ago", -n)
	case n == 1:
		return "1 day left"
	}
	return fmt.Sprintf("%d days left", n)
}

func tlsVersionName(v uint16) string { return tls.VersionName(v) }

// checkLogin records the result of the -auth login.
func (r *checkReport) checkLogin(f *policy.Failure) {
	r.LoginAs = r.dest.AuthUsername
	if o := r.dest.OAuth; o != nil {
		r.LoginAs = fmt.Sprintf("%s (OAuth %s)", o.Mailbox, o.Flow)
	}
	if f == nil {
		r.Login = "ok"
		return
	}
	r.Login = "failed"
	r.Verdict, r.Class, r.Detail, r.Fix, r.ExitCode = "fail", string(f.Class), f.Detail, f.Fix, checkLogin
}
