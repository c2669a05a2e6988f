// Package metrics defines tlsrelay's Prometheus metrics and serves them
// with the health probes a container platform expects. The exposition
// format comes from prometheus/client_golang, the reference library, so
// names, types and escaping are exactly what Prometheus parses.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the relay's counters, gauges and histograms.
type Metrics struct {
	Registry *prometheus.Registry

	Accepted         prometheus.Counter
	Rejected         *prometheus.CounterVec // reason
	Attempts         *prometheus.CounterVec // destination, result
	TLSFailures      *prometheus.CounterVec // destination, class
	DeliveryLatency  *prometheus.HistogramVec
	CertExpiry       *prometheus.GaugeVec // destination, upstream
	Reloads          *prometheus.CounterVec
	LastReload       prometheus.Gauge
	LastReloadResult prometheus.Gauge
	TokenRequests    *prometheus.CounterVec // destination, result
	// TLSRPT counts MX delivery's sessions by TLS-RPT policy type and
	// result type (success, or an RFC 8460 result type) beside the class.
	TLSRPT *prometheus.CounterVec // policy, result, class
	// TLSRPTSent counts the tries to send a TLS-RPT report to a rua, by
	// transport (https, mailto) and result (delivered, queued, failed,
	// skipped, gave-up).
	TLSRPTSent *prometheus.CounterVec // transport, result
	// DownSince is, per suspended destination, when it went down (Unix
	// seconds); a destination that works has no series.
	DownSince *prometheus.GaugeVec // destination
	// TokenExpiry, if set, reports each OAuth destination's current token
	// expiry; it is read at every scrape.
	TokenExpiry func() map[string]time.Time
	// Per destination limits and throttling.
	LimitWaiting     *prometheus.GaugeVec   // destination: messages waiting for a limit
	ConnectionsInUse *prometheus.GaugeVec   // destination: connections taken under max_connections
	Throttles        *prometheus.CounterVec // destination, upstream: throttling replies
	// JournalCompactedMessages counts messages moved out of sparse journal
	// segments to files of their own, so that the segments could go.
	JournalCompactedMessages prometheus.Counter
}

// QueueStats reports the queue's size and its oldest message, at scrape.
type QueueStats func() (size int, oldest time.Time)

// New creates the metrics. queue is called at every scrape.
func New(queue QueueStats) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "tlsrelay_messages_accepted_total",
			Help: "Messages accepted from clients (answered 250)."}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_messages_rejected_total",
			Help: "Messages, recipients or connections refused at the front door, by reason."}, []string{"reason"}),
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_delivery_attempts_total",
			Help: "Delivery attempts by destination and result (delivered, or the failure class)."}, []string{"destination", "result"}),
		TLSFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_tls_failures_total",
			Help: "Upstream TLS verification failures by destination and class."}, []string{"destination", "class"}),
		DeliveryLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tlsrelay_delivery_latency_seconds",
			Help:    "Time from acceptance to the upstream's 250, per destination.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14400, 86400}},
			[]string{"destination"}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tlsrelay_upstream_cert_earliest_expiry_timestamp_seconds",
			Help: "Earliest notAfter (Unix seconds) in the chain last verified for each upstream."}, []string{"destination", "upstream"}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_config_reloads_total",
			Help: "Configuration reloads (SIGHUP) by result."}, []string{"result"}),
		LastReload: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tlsrelay_config_last_reload_timestamp_seconds",
			Help: "When the configuration was last loaded or reloaded (Unix seconds)."}),
		LastReloadResult: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tlsrelay_config_last_reload_successful",
			Help: "1 if the last configuration reload succeeded, 0 if it was refused."}),
		TokenRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_oauth_token_requests_total",
			Help: "Requests to OAuth token endpoints by destination and result (success, or the provider's error code, unreachable, no_refresh_token)."},
			[]string{"destination", "result"}),
		TLSRPT: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_tlsrpt_sessions_total",
			Help: "Sessions of delivery to mail exchangers, by TLS-RPT policy type (tlsa, sts, no-policy-found), result (success or the RFC 8460 result type) and tlsrelay's failure class."},
			[]string{"policy", "result", "class"}),
		TLSRPTSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_tlsrpt_reports_sent_total",
			Help: "Tries to send a TLS-RPT report to a domain's rua, by transport (https, mailto) and result (delivered, queued, failed: tried again, skipped, gave-up)."},
			[]string{"transport", "result"}),
		DownSince: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tlsrelay_destination_down_since_timestamp_seconds",
			Help: "When each destination that is down (suspended: its mail waits, one message probes it) went down, Unix seconds; absent while it works."},
			[]string{"destination"}),
	}
	m.LimitWaiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tlsrelay_destination_limit_waiting_messages",
		Help: "Messages waiting for a limit of the destination (max_connections, max_messages_per_minute)."}, []string{"destination"})
	m.ConnectionsInUse = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tlsrelay_destination_connections_in_use",
		Help: "Connections to a limited destination's upstreams in use."}, []string{"destination"})
	m.Throttles = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tlsrelay_upstream_throttles_total",
		Help: "Times an upstream throttled the relay and was backed off."}, []string{"destination", "upstream"})
	m.JournalCompactedMessages = prometheus.NewCounter(prometheus.CounterOpts{Name: "tlsrelay_journal_compacted_messages_total",
		Help: "Waiting messages moved out of sparse journal segments to files of their own, so that the segments could be deleted."})
	queueSize := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tlsrelay_queue_messages",
		Help: "Messages in the queue."}, func() float64 { n, _ := queue(); return float64(n) })
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tlsrelay_queue_oldest_message_age_seconds",
		Help: "Age of the oldest message in the queue (0 when empty)."}, func() float64 {
		_, t := queue()
		if t.IsZero() {
			return 0
		}
		return time.Since(t).Seconds()
	})
	m.Registry.MustRegister(m.Accepted, m.Rejected, m.Attempts, m.TLSFailures, m.DeliveryLatency, m.CertExpiry,
		m.Reloads, m.LastReload, m.LastReloadResult, queueSize, oldest, m.TokenRequests, m.TLSRPT, m.TLSRPTSent, tokenExpiry{m}, m.DownSince,
		m.LimitWaiting, m.ConnectionsInUse, m.Throttles, m.JournalCompactedMessages,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Reloads.WithLabelValues("success")
	m.Reloads.WithLabelValues("failure")
	m.LastReload.SetToCurrentTime()
	m.LastReloadResult.Set(1)
	return m
}

// tokenExpiry exports the seconds until each OAuth destination's current
// access token expires (negative once expired).
type tokenExpiry struct{ m *Metrics }

var tokenExpiryDesc = prometheus.NewDesc("tlsrelay_oauth_token_expiry_seconds",
	"Seconds until the current OAuth access token of each destination expires.", []string{"destination"}, nil)

func (t tokenExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- tokenExpiryDesc }

func (t tokenExpiry) Collect(ch chan<- prometheus.Metric) {
	if t.m.TokenExpiry == nil {
		return
	}
	for dest, exp := range t.m.TokenExpiry() {
		ch <- prometheus.MustNewConstMetric(tokenExpiryDesc, prometheus.GaugeValue, time.Until(exp).Seconds(), dest)
	}
}
