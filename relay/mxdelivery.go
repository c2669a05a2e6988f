package relay

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/dnsx"
	"tlsrelay/relay/dsn"
	"tlsrelay/relay/headerfrom"
	"tlsrelay/relay/mtasts"
	"tlsrelay/relay/mx"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/tlsrpt"
	"tlsrelay/relay/upstream"
)

// attemptMX delivers for a destination with upstream = "mx": recipients
// are grouped by domain, and each domain's mail goes to its mail
// exchangers as its plan says (mx.Planner). The hosts, one address after
// the other, are the attempt's hops, found at delivery time: each is
// tried through attemptHop (per-hop suspension, throttling, the pool of
// verified connections), moving on as the routing rules say (failsOver).
// A domain's failure is its recipients' (o.refused), never the
// destination's: one domain's broken mail server does not make the
// others' mail wait for it.
func (r *Relay) attemptMX(fl *flight, env spool.Envelope, dest *policy.Destination, rcpts []string, body upstream.Body, allOrNothing bool) *outcome {
	o := &outcome{dest: dest, rcpts: rcpts, refused: map[string]*policy.Failure{}}
	groups := map[string][]string{}
	var domains []string
	for _, rc := range rcpts {
		d := domainOf(rc)
		if groups[d] == nil {
			domains = append(domains, d)
		}
		groups[d] = append(groups[d], rc)
	}
	sort.Strings(domains)
	planner := r.mxPlanner(dest)
	log := r.log.With("id", env.ID, "destination", dest.Name())
	// "TLS-Required: No" relaxes MTA-STS to verify, never DANE nor verify
	// itself; REQUIRETLS overrides it (RFC 8689 §5). Only under the
	// default level: an operator's explicit mx_security = "sts" is not
	// for a message's header to lower.
	if !body.RequireTLS && dest.MXSecurity == policy.DANEOrSTS && mx.TLSRequiredNo(body.Open()) {
		planner.RelaxSTS = true
		log.Info("the message says TLS-Required: No: MTA-STS does not exclude mail exchangers for it (verify still applies, and DANE)")
	}
	settled := map[string]bool{} // recipients whose domain was tried
	for _, dom := range domains {
		if fl.ctx.Err() != nil {
			break
		}
		drcpts := groups[dom]
		plan := planner.Plan(fl.ctx, dom, dest.MXSecurity)
		res := r.deliverDomain(fl, log.With("domain", dom), env, dest, plan, drcpts, body, allOrNothing)
		if res.superseded {
			return res
		}
		o.tries = append(o.tries, res.tries...)
		if res.hop != nil {
			o.hop = res.hop
		}
		for _, rc := range drcpts {
			settled[rc] = true
			if f := res.failureFor(rc); f != nil {
				o.refused[rc] = f
			}
		}
		if res.delivered {
			o.delivered, o.tls, o.upReply = true, res.tls, res.upReply
		}
	}
	for _, rc := range rcpts {
		if !settled[rc] {
			o.refused[rc] = &policy.Failure{Class: policy.Connect, Host: domainOf(rc), Detail: "not tried: the delivery was stopped (shutdown or delivery_timeout)", Fix: "the relay will retry"}
		}
	}
	return o
}

// deliverDomain sends the message to rcpts, all of plan's domain.
func (r *Relay) deliverDomain(fl *flight, log *slog.Logger, env spool.Envelope, dest *policy.Destination, plan *mx.Plan, rcpts []string, body upstream.Body, allOrNothing bool) *outcome {
	o := &outcome{dest: dest, rcpts: rcpts}
	if f := plan.Failure; f != nil {
		r.recordRPT(log, plan.Domain, tlsrpt.PolicyDesc{Type: tlsrpt.NoPolicyFound}, "", "", f)
		r.logMXFailure(log, "delivery attempt failed", f)
		o.failure = f
		return o
	}
	if sts := plan.STS; sts != nil && sts.Problem != nil {
		// The policy could not be had (a cached one may still be in force):
		// recorded, and the hosts are judged as the plan says.
		f := &policy.Failure{Class: policy.MXSecurityFailure, Host: plan.Domain, Result: sts.Problem.Result,
			Detail: "the MTA-STS policy could not be fetched: " + sts.Problem.Err.Error(),
			Fix:    "the domain's policy server (" + mtasts.URL(plan.Domain) + ") must answer 200 with a valid policy over verified HTTPS"}
		if sts.Policy != nil {
			f.Detail += " (the cached policy, id " + sts.ID + ", stays in force)"
		}
		r.recordRPT(log, plan.Domain, tlsrpt.PolicyDesc{Type: tlsrpt.STS}, "", "", f)
		log.Warn("MTA-STS policy not fetched", "tlsrpt_result", string(f.Result), "detail", f.Detail, "fix", f.Fix)
	}
	var last *policy.Failure
	note := func(f *policy.Failure) {
		// The reason given is the most telling one: a verdict on a host's
		// security or TLS over not reaching one.
		if last == nil || f.Class != policy.Connect && f.Class != policy.DNS || last.Class == policy.Connect || last.Class == policy.DNS {
			last = f
		}
	}
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
			hop := r.mxHop(dest, h.Auth, net.JoinHostPort(ip.String(), policy.MXPort))
			ho := r.attemptHop(fl, env, hop, rcpts, body, allOrNothing)
			if ho.superseded {
				return ho
			}
			o.tries = append(o.tries, hopTry{hop, ho.failure})
			if h.Problem == nil {
				switch f := ho.failure; {
				case f != nil && f.RPT() != "":
					r.recordRPT(hlog, plan.Domain, h.Policy, h.Name, ip.String(), f)
				case ho.tls.HandshakeComplete:
					r.recordRPT(hlog, plan.Domain, h.Policy, h.Name, ip.String(), nil)
				}
			}
			if ho.failure == nil {
				if ho.delivered {
					hlog.Info("delivered to mail exchanger", "address", ip.String(), "security", security(h))
				}
				ho.tries = o.tries
				return ho // the server took the transaction, whatever it said of single recipients
			}
			if ho.failure.Class == policy.RequireTLS {
				note(ho.failure) // another mail exchanger may offer it
				break
			}
			if !failsOver(ho.failure.Class) || fl.ctx.Err() != nil {
				ho.tries = o.tries
				return ho // the server's verdict on the message stands
			}
			note(ho.failure)
			o.hop = hop
		}
	}
	if last == nil {
		last = &policy.Failure{Class: policy.DNS, Host: plan.Domain, Detail: "no mail exchanger of " + plan.Domain + " could be tried", Fix: "the relay will retry"}
	}
	o.failure = last
	return o
}

// mxHop returns the hop for one address of a mail exchanger: dest's
// policy with what the host must prove (policy.Destination.ForMX). Hops
// are kept, by everything that shapes their verification, so that the
// pool of verified connections finds them again at the next message (the
// per-hop suspension is keyed by name, not by the value). The cache is
// bounded (see hopCache), and a reload forgets the hops of destinations
// it replaced.
func (r *Relay) mxHop(dest *policy.Destination, h policy.MXHost, addr string) *policy.Destination {
	if !h.DANE {
		// Without DANE the recipient domain plays no part in verification:
		// domains that share a mail exchanger share its connections and
		// its suspension.
		h.Domain = ""
	}
	var key strings.Builder
	fmt.Fprintf(&key, "%p|%s|%s|%s|%s|%v|%s", dest, addr, h.Name, h.Base, h.Domain, h.DANE, h.TLSAName)
	for _, t := range h.TLSA {
		key.WriteString("|" + t.String())
	}
	return r.mxHops.get(key.String(), func() *policy.Destination { return dest.ForMX(h, addr) })
}

// maxMXHops bounds the hops kept for mail exchangers: a relay delivering
// to many domains must not grow without end. Past it the cache starts
// afresh; a connection pooled under a forgotten hop just idles out.
const maxMXHops = 4096

// hopCache keeps the hops of delivery to mail exchangers, by key.
type hopCache struct {
	mu   sync.Mutex
	hops map[string]*policy.Destination
}

// get returns the hop kept under key, making it with make if there is none.
func (c *hopCache) get(key string, make func() *policy.Destination) *policy.Destination {
	c.mu.Lock()
	defer c.mu.Unlock()
	if hop := c.hops[key]; hop != nil {
		return hop
	}
	if c.hops == nil || len(c.hops) >= maxMXHops {
		c.hops = map[string]*policy.Destination{}
	}
	hop := make()
	c.hops[key] = hop
	return hop
}

// prune forgets the hops whose destination keep refuses.
func (c *hopCache) prune(keep func(*policy.Destination) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, hop := range c.hops {
		if !keep(hop.Parent()) {
			delete(c.hops, k)
		}
	}
}

// size is how many hops are kept.
func (c *hopCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.hops)
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
	if f.Result == "" && f.RPT() != "" {
		g := *f
		g.Result = f.RPT()
		f = &g
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
		log.Warn("cannot count the session in the TLS-RPT report", "error", err)
	}
}

// mxPlanner is the planner of dest's deliveries under the configuration
// in force: its resolver, the MTA-STS cache in the spool directory, and
// dest's ca_file (if any) for the WebPKI checks of policy servers.
func (r *Relay) mxPlanner(dest *policy.Destination) *mx.Planner {
	cfg := r.Config()
	return mx.NewPlanner(mx.Setup{Resolver: cfg.DNS.Resolver, TrustAD: cfg.DNS.TrustAD, Timeout: cfg.Queue.ConnectTimeout.Duration,
		CacheDir: MTASTSCacheDir(cfg.Queue.Dir), Roots: dest.Roots, Dial: r.mxDial, Now: r.now,
		AllowInternal: cfg.DNS.AllowInternalAddresses})
}

// MTASTSCacheDir is where the MTA-STS policies are cached in the spool
// directory queueDir.
func MTASTSCacheDir(queueDir string) string { return filepath.Join(queueDir, "mta-sts") }

// TLSRPTDir is where the TLS-RPT reports are kept in the spool directory.
func TLSRPTDir(queueDir string) string { return filepath.Join(queueDir, "tlsrpt") }

// startTLSRPTSender starts sending the TLS-RPT reports to the domains'
// rua ([tlsrpt] send = true); stopTLSRPT stops it.
func (r *Relay) startTLSRPTSender() {
	cfg := r.Config()
	t := cfg.TLSRPT
	if !t.Send {
		return
	}
	dns := &dnsx.Client{Server: cfg.DNS.Resolver, TrustAD: cfg.DNS.TrustAD, Timeout: cfg.Queue.ConnectTimeout.Duration}
	var unsigned sync.Once
	s := &tlsrpt.Sender{Dir: TLSRPTDir(cfg.Queue.Dir), Resolver: dns, From: t.From, MailFrom: t.MailFrom,
		Org: t.OrganizationName, Contact: t.ContactInfo, Flush: r.reports.Flush, Now: r.now, Log: r.log,
		Poster: &tlsrpt.Poster{Dial: mx.ResolvingDial(dns, r.mxDial, cfg.DNS.AllowInternalAddresses, "the TLS-RPT report endpoint")},
		Sent:   func(transport, result string) { r.metrics.TLSRPTSent.WithLabelValues(transport, result).Inc() },
		Queue:  func(from, rcpt string, msg []byte) error { return r.queueTLSRPT(from, rcpt, msg, &unsigned) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.stopTLSRPT = func() { cancel(); <-done }
	go func() {
		defer close(done)
		defer func() {
			// Reports are statistics: a fault in sending them must not
			// take the relay, and the mail it holds, down with it.
			if v := recover(); v != nil {
				r.log.Error("TLS-RPT report sending stopped by an internal error; reports are no longer sent until restart", "panic", fmt.Sprint(v))
			}
		}()
		s.Run(ctx)
	}()
}

// queueTLSRPT puts a report mail into the spool from the envelope sender
// from ("" for <>) to rcpt, routed, rewritten and DKIM-signed as any mail
// from that sender. A report that no destination takes, or that no
// [[dkim]] key signs (RFC 8460 §5.3: receivers ignore unsigned reports),
// is a *tlsrpt.SkipError; the latter is also logged once as a warning.
func (r *Relay) queueTLSRPT(from, rcpt string, msg []byte, unsigned *sync.Once) error {
	cfg := r.Config()
	dest := r.Config().Table.Choose(senderOf(from), domainOf(rcpt))
	if dest == nil {
		return &tlsrpt.SkipError{Reason: fmt.Sprintf("no [[destination]] takes mail from <%s> to %s; not sent (the relay is no open relay, for its own mail neither)", from, rcpt)}
	}
	if mb := headerFromOf(dest); mb != "" {
		var out bytes.Buffer
		w := headerfrom.NewWriter(&out, mb)
		w.Write(msg)
		if _, err := w.Close(); err == nil {
			msg = out.Bytes()
		}
	}
	// RFC 8460 §5.3: the signature covers the report's own fields too.
	sig, _, err := cfg.Signer.Sign(dsn.ReadHeaders(bytes.NewReader(msg)), bytes.NewReader(msg), "TLS-Report-Domain", "TLS-Report-Submitter")
	if err != nil {
		return err
	}
	if sig == "" {
		unsigned.Do(func() {
			r.log.Warn("no [[dkim]] key covers the From of TLS-RPT report mail; receivers ignore unsigned reports (RFC 8460), so report mail is not sent: add a [[dkim]] key for its domain or set [tlsrpt] from", "from", cfg.TLSRPT.From)
		})
		return &tlsrpt.SkipError{Reason: "no [[dkim]] key signs the report mail's From (" + cfg.TLSRPT.From + "); receivers ignore unsigned reports"}
	}
	p, err := r.store.Create(spool.Envelope{From: from, Recipients: []string{rcpt}, Received: time.Now().UTC()})
	if err != nil {
		return err
	}
	p.SetPrepend(sig)
	if _, err := p.Write(msg); err != nil {
		p.Abort()
		return err
	}
	if err := p.Commit(); err != nil {
		return err
	}
	r.log.Info("TLS-RPT report mail queued", "id", p.ID(), "to", rcpt, "destination", dest.Name())
	r.queue.add(p.Envelope())
	return nil
}
