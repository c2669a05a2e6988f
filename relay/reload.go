package relay

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"log/slog"
	"reflect"
	"slices"

	"tlsrelay/policy"
	"tlsrelay/relay/config"
	"tlsrelay/relay/oauth"
)

// ReloadFile loads the configuration at path and puts it in force (see
// Reload). A configuration that does not load is refused, with the
// reason logged, and the one in force stays.
func (r *Relay) ReloadFile(path string) error {
	next, err := config.Load(path)
	if err != nil {
		r.metrics.Reloads.WithLabelValues("failure").Inc()
		r.metrics.LastReloadResult.Set(0)
		r.log.Error("configuration reload refused; keeping the one in force", "file", path, "error", err)
		return err
	}
	r.Reload(next)
	return nil
}

// Reload puts next in force: destinations and their policies (CA files,
// pins), allowed networks, users, limits, the inbound certificate, the log
// level. Sessions in progress go on; queued mail is routed by the new
// policies at its next attempt. Keys that only take effect at a restart
// (listen addresses, the spool, the number of workers, ...) keep their
// running values, and the log says which of them changed.
//
// A destination whose compiled policy is unchanged stays the same value,
// with its pooled connections. For one that changed or went away, Reload
// returns only once nothing is sent under its old policy any more, and
// after closing its pooled connections (see policygate.go): a queued
// delivery caught in between is routed again under the new policy, a
// reject-mode session gets a 451 asking to send the message again.
func (r *Relay) Reload(next *config.Config) {
	r.reloading.Lock()
	defer r.reloading.Unlock()
	cur := r.Config()
	var restart []string
	keep := func(key string, dst, src any) {
		d, s := reflect.ValueOf(dst).Elem(), reflect.ValueOf(src).Elem()
		if !reflect.DeepEqual(d.Interface(), s.Interface()) {
			restart = append(restart, key)
			d.Set(s)
		}
	}
	keep("server.listen", &next.Server.Listen, &cur.Server.Listen)
	keep("server.hostname", &next.Server.Hostname, &cur.Server.Hostname)
	keep("server.max_message_bytes", &next.Server.MaxMessageBytes, &cur.Server.MaxMessageBytes)
	keep("server.max_recipients", &next.Server.MaxRecipients, &cur.Server.MaxRecipients)
	keep("server.read_timeout", &next.Server.ReadTimeout, &cur.Server.ReadTimeout)
	keep("server.write_timeout", &next.Server.WriteTimeout, &cur.Server.WriteTimeout)
	keep("server.implicit_tls_listen", &next.Server.ImplicitTLSListen, &cur.Server.ImplicitTLSListen)
	keep("queue.dir", &next.Queue.Dir, &cur.Queue.Dir)
	keep("queue.workers", &next.Queue.Workers, &cur.Queue.Workers)
	keep("queue.upstream_idle_timeout", &next.Queue.UpstreamIdleTimeout, &cur.Queue.UpstreamIdleTimeout)
	keep("queue.upstream_max_messages", &next.Queue.UpstreamMaxMessages, &cur.Queue.UpstreamMaxMessages)
	keep("queue.upstream_max_age", &next.Queue.UpstreamMaxAge, &cur.Queue.UpstreamMaxAge)
	keep("metrics.listen", &next.Metrics.Listen, &cur.Metrics.Listen)
	keep("tlsrpt", &next.TLSRPT, &cur.TLSRPT)
	if (next.TLSCert == nil) != (cur.TLSCert == nil) {
		// STARTTLS is offered or not from the start; a new certificate for
		// an existing setup is picked up (see newServer's GetCertificate).
		restart = append(restart, "server.tls_cert_file (enabling or disabling inbound TLS)")
		next.TLSCert = cur.TLSCert
		next.Server.TLSCertFile, next.Server.TLSKeyFile = cur.Server.TLSCertFile, cur.Server.TLSKeyFile
	}
	keepUnchanged(cur.Table, next)
	old := *r.gates.Load()
	gs := newGates(next.Table, old)
	// The gates first: a delivery that finds a new destination in the
	// configuration finds its gate too.
	r.gates.Store(&gs)
	r.cfg.Store(next)
	waited := retire(old, gs, retireGrace)
	closed := r.pool.Prune(func(hop *policy.Destination) bool { return gs[hop.Parent()] != nil })
	r.forgetLimits(func(d *policy.Destination) bool { return gs[d] != nil })
	r.mxHops.prune(func(d *policy.Destination) bool { return gs[d] != nil })
	r.queue.resume()
	if r.level != nil {
		var lv slog.Level
		lv.UnmarshalText([]byte(next.Log.Level))
		r.level.Set(lv)
	}
	r.metrics.Reloads.WithLabelValues("success").Inc()
	r.metrics.LastReload.SetToCurrentTime()
	r.metrics.LastReloadResult.Set(1)
	attrs := []any{"file", next.Path, "destinations", len(next.Table.Destinations()),
		"changed_destinations", countChanged(old, gs), "deliveries_waited_for", waited, "pooled_connections_closed", closed}
	if len(restart) > 0 {
		attrs = append(attrs, "needs_restart", restart)
	}
	r.log.Info("configuration reloaded", attrs...)
}

// keepUnchanged puts the destinations of cur whose compiled policy equals
// one of next's into next's table in place of the new values, so that
// deliveries, pooled connections and TLS sessions under them go on
// undisturbed by a reload that did not change them.
func keepUnchanged(cur *policy.Table, next *config.Config) {
	byName := map[string]*policy.Destination{}
	for _, d := range cur.Destinations() {
		byName[d.Name()] = d
	}
	dests := slices.Clone(next.Table.Destinations())
	kept := 0
	for i, d := range dests {
		if old := byName[d.Name()]; old != nil && samePolicy(old, d) {
			dests[i] = old
			kept++
		}
	}
	if kept == 0 {
		return
	}
	if t, err := policy.NewTable(dests); err == nil { // the same domains as next's table
		next.Table = t
	}
}

// samePolicy reports whether a and b were compiled to the same policy: the
// same configuration text and the same contents of the files and
// variables it names (a reload re-reads them, and a CA file or a password
// may have changed under the same name).
func samePolicy(a, b *policy.Destination) bool {
	if !reflect.DeepEqual(a.Spec(), b.Spec()) || a.AuthPassword != b.AuthPassword ||
		oauth.Fingerprint(a.OAuth) != oauth.Fingerprint(b.OAuth) {
		return false
	}
	if (a.Roots == nil) != (b.Roots == nil) || a.Roots != nil && !a.Roots.Equal(b.Roots) {
		return false
	}
	return sameCertificate(a.ClientCert, b.ClientCert)
}

func sameCertificate(a, b *tls.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !slices.EqualFunc(a.Certificate, b.Certificate, bytes.Equal) {
		return false
	}
	k, ok := a.PrivateKey.(interface{ Equal(crypto.PrivateKey) bool })
	return ok && k.Equal(b.PrivateKey)
}

// countChanged counts the destinations of old that next does not keep.
func countChanged(old, next gates) int {
	n := 0
	for d, g := range old {
		if next[d] != g {
			n++
		}
	}
	return n
}

// inboundCertificate serves the certificate of the configuration in
// force, so a renewed certificate is used after a reload.
func (r *Relay) inboundCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Config().TLSCert, nil
}
