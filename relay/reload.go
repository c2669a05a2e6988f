package relay

import (
	"crypto/tls"
	"log/slog"
	"reflect"

	"tlsrelay/relay/config"
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
func (r *Relay) Reload(next *config.Config) {
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
	keep("metrics.listen", &next.Metrics.Listen, &cur.Metrics.Listen)
	if (next.TLSCert == nil) != (cur.TLSCert == nil) {
		// STARTTLS is offered or not from the start; a new certificate for
		// an existing setup is picked up (see newServer's GetCertificate).
		restart = append(restart, "server.tls_cert_file (enabling or disabling inbound TLS)")
		next.TLSCert = cur.TLSCert
		next.Server.TLSCertFile, next.Server.TLSKeyFile = cur.Server.TLSCertFile, cur.Server.TLSKeyFile
	}
	r.cfg.Store(next)
	r.queue.resume()
	if r.level != nil {
		var lv slog.Level
		lv.UnmarshalText([]byte(next.Log.Level))
		r.level.Set(lv)
	}
	r.metrics.Reloads.WithLabelValues("success").Inc()
	r.metrics.LastReload.SetToCurrentTime()
	r.metrics.LastReloadResult.Set(1)
	attrs := []any{"file", next.Path, "destinations", len(next.Table.Destinations())}
	if len(restart) > 0 {
		attrs = append(attrs, "needs_restart", restart)
	}
	r.log.Info("configuration reloaded", attrs...)
}

// inboundCertificate serves the certificate of the configuration in
// force, so a renewed certificate is used after a reload.
func (r *Relay) inboundCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Config().TLSCert, nil
}
