package relay

import (
	"sync"
	"time"

	"tlsrelay/relay/upstream"
)

// expiryWarnings remembers when each upstream was last warned about, so
// the early warning is logged once per day per upstream, not per message.
type expiryWarnings struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// warnExpiry logs a warning when a certificate of a verified upstream's
// chain expires within the configured window.
func (r *Relay) warnExpiry(conn *upstream.Conn) {
	window := r.Config().Queue.CertExpiryWarning.Duration
	if window <= 0 || len(conn.TLS.VerifiedChains) == 0 && len(conn.TLS.PeerCertificates) == 0 {
		return
	}
	now := r.now()
	certs := conn.TLS.PeerCertificates
	soonest := certs[0]
	for _, c := range certs {
		if c.NotAfter.Before(soonest.NotAfter) {
			soonest = c
		}
	}
	if soonest.NotAfter.Sub(now) > window {
		return
	}
	host := conn.Dest.Upstream
	r.expiry.mu.Lock()
	if r.expiry.last == nil {
		r.expiry.last = map[string]time.Time{}
	}
	if last, ok := r.expiry.last[host]; ok && now.Sub(last) < 24*time.Hour {
		r.expiry.mu.Unlock()
		return
	}
	r.expiry.last[host] = now
	r.expiry.mu.Unlock()
	r.log.Warn("upstream certificate expires soon", "upstream", host, "destination", conn.Dest.Name(),
		"subject", soonest.Subject.String(), "not_after", soonest.NotAfter.UTC().Format(time.RFC3339),
		"days_left", int(soonest.NotAfter.Sub(now).Hours()/24),
		"fix", "renew the certificate on "+conn.Dest.ServerName+" before "+soonest.NotAfter.UTC().Format("2006-01-02"))
}

// recordExpiry exports the earliest notAfter of a verified upstream chain.
func (r *Relay) recordExpiry(conn *upstream.Conn) {
	var earliest time.Time
	for _, c := range conn.TLS.PeerCertificates {
		if earliest.IsZero() || c.NotAfter.Before(earliest) {
			earliest = c.NotAfter
		}
	}
	if !earliest.IsZero() {
		r.metrics.CertExpiry.WithLabelValues(conn.Dest.Name(), conn.Dest.Upstream).Set(float64(earliest.Unix()))
	}
}
