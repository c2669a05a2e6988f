package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sort"

	"tlsrelay/policy"
	"tlsrelay/relay/mx"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/tlsrpt"
	"tlsrelay/relay/upstream"
)

// attemptMX delivers for a destination with upstream = "mx": recipients
// are grouped by domain, and each domain's mail goes to its mail
// exchangers as its plan says (mx.Planner), one host after the other
// until one takes the transaction or refuses it. A domain's failure is
// its recipients' (o.refused), never the destination's: one domain's
// broken mail server does not suspend the others.
func (r *Relay) attemptMX(ctx context.Context, fl *flight, log *slog.Logger, env spool.Envelope, o *outcome, body upstream.Body, allOrNothing bool) *outcome {
	dest := o.dest
	o.refused = map[string]*policy.Failure{}
	groups := map[string][]string{}
	var domains []string
	for _, rc := range o.rcpts {
		d := domainOf(rc)
		if groups[d] == nil {
			domains = append(domains, d)
		}
		groups[d] = append(groups[d], rc)
	}
	sort.Strings(domains)
	planner := r.mxPlanner(dest)
	for _, dom := range domains {
		if ctx.Err() != nil {
			break
		}
		rcpts := groups[dom]
		plan := planner.Plan(ctx, dom, dest.MXSecurity)
		res := r.deliverDomain(ctx, fl, log.With("domain", dom), env, dest, plan, rcpts, body, allOrNothing)
		r.countAttempt(env, res)
		if res.superseded {
			*o = outcome{dest: dest, rcpts: o.rcpts, superseded: true}
			log.Info("stopped: the destination's policy was replaced by a reload")
			return o
		}
		for _, rc := range rcpts {
			if f := res.failureFor(rc); f != nil {
				o.refused[rc] = f
			}
		}
		if res.delivered {
			o.delivered, o.tls, o.upReply = true, res.tls, res.upReply
		}
	}
	for _, rc := range o.rcpts {
		if !o.delivered && o.refused[rc] == nil {
			o.refused[rc] = &policy.Failure{Class: policy.Connect, Host: domainOf(rc), Detail: "not tried: the delivery was stopped (shutdown or delivery_timeout)", Fix: "the relay will retry"}
		}
	}
	return o
}

// deliverDomain sends the message to rcpts, all of plan's domain.
func (r *Relay) deliverDomain(ctx context.Context, fl *flight, log *slog.Logger, env spool.Envelope, dest *policy.Destination, plan *mx.Plan, rcpts []string, body upstream.Body, allOrNothing bool) *outcome {
	o := &outcome{dest: dest, rcpts: rcpts}
	if f := plan.Failure; f != nil {
		desc := tlsrpt.PolicyDesc{Type: tlsrpt.NoPolicyFound}
		r.recordRPT(log, plan.Domain, desc, "", "", f)
		r.logMXFailure(log, "delivery attempt failed", f)
		o.failure = f
		return o
	}
	var last *policy.Failure
	note := func(f *policy.Failure) {
		// The reason given is the most telling one: a verdict on a host's
		// security or TLS over not reaching one.
		if last == nil || f.Class != policy.Connect && f.Class != policy.DNS || last.Class == policy.Connect || last.Class == policy.DNS {
			last = f
		}
	}
	dialer := r.dialer()
	dialer.DialContext = r.mxDial
	for _, h := range plan.Hosts {
		hlog := log.With("mx", h.Name)
		if h.Failure != nil {
			r.recordRPT(hlog, plan.Domain, h.Policy, h.Name, "", h.Failure)
			r.logMXFailure(hlog, "mail exchanger not tried", h.Failure)
			note(h.Failure)
			continue
		}
		if body.RequireTLS && !h.SecureMX {
			f := &policy.Failure{Class: policy.RequireTLS, Host: h.Name + ":" + policy.MXPort,
				Detail: fmt.Sprintf("the message was sent with REQUIRETLS, and mail exchanger %s of %s was not found securely: the MX lookup is not DNSSEC-validated and no MTA-STS policy lists the host (RFC 8689 §4.2.1)", h.Name, plan.Domain),
				Fix:    "the recipient's domain must sign its MX records with DNSSEC or publish an MTA-STS policy; or the sender may send without REQUIRETLS"}
			r.logMXFailure(hlog, "mail exchanger not tried", f)
			note(f)
			continue
		}
		if h.Problem != nil {
			r.recordRPT(hlog, plan.Domain, h.Policy, h.Name, "", h.Problem)
			r.logMXFailure(hlog, "MTA-STS policy in testing mode does not list this mail exchanger; delivering under verify", h.Problem)
		}
		for _, ip := range h.Addrs {
			addr := net.JoinHostPort(ip.String(), policy.MXPort)
			hd := dest.ForMX(h.Auth, addr)
			alog := hlog.With("address", addr)
			if !fl.send() {
				o.superseded = true
				return o
			}
			conn, err := dialer.Dial(ctx, hd)
			if err != nil {
				if ctx.Err() != nil && fl.retired() {
					o.superseded = true
					return o
				}
				f := policy.FailureOf(hd.Upstream, err)
				if h.Problem == nil {
					r.recordRPT(alog, plan.Domain, h.Policy, h.Name, ip.String(), f)
				}
				r.logMXFailure(alog, "delivery attempt failed", f)
				note(f)
				if ctx.Err() != nil {
					break
				}
				continue
			}
			if h.Problem == nil {
				r.recordRPT(alog, plan.Domain, h.Policy, h.Name, ip.String(), nil)
			}
			res, err := conn.Send(ctx, env.From, rcpts, body, allOrNothing)
			o.tls = conn.TLS
			conn.Close()
			if err != nil {
				f := policy.FailureOf(hd.Upstream, err)
				r.logMXFailure(alog, "delivery attempt failed", f)
				if f.Class == policy.RequireTLS {
					note(f) // another mail exchanger may offer it
					break
				}
				o.failure = f // the server answered: its word stands
				return o
			}
			o.refused, o.upReply = res.Refused, res.Reply
			o.delivered = len(res.Refused) < len(rcpts) && !(allOrNothing && len(res.Refused) > 0)
			for rc, f := range res.Refused {
				logFailure(alog.With("rcpt", rc), "recipient refused by upstream", f)
			}
			if o.delivered {
				alog.Info("delivered", "security", security(h), "tls_version", tls.VersionName(conn.TLS.Version),
					"cipher", tls.CipherSuiteName(conn.TLS.CipherSuite), "refused", len(res.Refused), "reply", res.Reply)
			}
			return o
		}
	}
	if last == nil {
		last = &policy.Failure{Class: policy.DNS, Host: plan.Domain, Detail: "no mail exchanger of " + plan.Domain + " could be tried", Fix: "the relay will retry"}
	}
	o.failure = last
	return o
}

// security names how a host was authenticated, for the log.
func security(h mx.Host) string {
	switch {
	case h.Auth.DANE:
		return "dane"
	case h.Policy.Type == tlsrpt.STS && h.Problem == nil:
		return "mta-sts"
	}
	return "verify"
}

// logMXFailure is logFailure with the TLS-RPT result type beside the class.
func (r *Relay) logMXFailure(log *slog.Logger, msg string, f *policy.Failure) {
	if rt := f.RPT(); rt != "" {
		log = log.With("tlsrpt_result", string(rt))
	}
	logFailure(log, msg, f)
}

// recordRPT counts one session (f nil: a success) in the TLS-RPT report of
// domain and in the metrics. Failures TLS-RPT has no result type for (a
// refused connection, a DNS failure without DNSSEC) are not counted.
func (r *Relay) recordRPT(log *slog.Logger, domain string, desc tlsrpt.PolicyDesc, mxHost, ip string, f *policy.Failure) {
	s := tlsrpt.Session{Time: r.now(), Domain: domain, Policy: desc, ReceivingMX: mxHost, ReceivingIP: ip}
	class := ""
	if f != nil {
		if s.Result = f.RPT(); s.Result == "" {
			return
		}
		class = string(f.Class)
		s.Reason = class
	}
	result := "success"
	if s.Result != "" {
		result = string(s.Result)
	}
	r.metrics.TLSRPT.WithLabelValues(string(desc.Type), result, class).Inc()
	if err := r.reports.Record(s); err != nil {
		log.Warn("cannot write the TLS-RPT report", "error", err)
	}
}

// mxPlanner is the planner of dest's deliveries under the configuration
// in force: its resolver, the MTA-STS cache in the spool directory, and
// dest's ca_file (if any) for the WebPKI checks of policy servers.
func (r *Relay) mxPlanner(dest *policy.Destination) *mx.Planner {
	cfg := r.Config()
	return mx.NewPlanner(mx.Setup{Resolver: cfg.DNS.Resolver, TrustAD: cfg.DNS.TrustAD, Timeout: cfg.Queue.ConnectTimeout.Duration,
		CacheDir: MTASTSCacheDir(cfg.Queue.Dir), Roots: dest.Roots, Dial: r.mxDial, Now: r.now})
}

// MTASTSCacheDir is where the MTA-STS policies are cached in the spool
// directory queueDir.
func MTASTSCacheDir(queueDir string) string { return filepath.Join(queueDir, "mta-sts") }

// TLSRPTDir is where the TLS-RPT reports are kept in the spool directory.
func TLSRPTDir(queueDir string) string { return filepath.Join(queueDir, "tlsrpt") }
