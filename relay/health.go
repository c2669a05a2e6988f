package relay

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics serves /metrics (Prometheus), /healthz (the process is
// alive) and /readyz (listening, queue recovered, spool writable,
// configuration loaded).
func (r *Relay) serveMetrics(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r.metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := r.ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	r.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go r.metricsSrv.Serve(ln)
	r.log.Info("metrics listening", "addr", ln.Addr().String())
	r.metricsAddr = ln.Addr()
	return nil
}

// MetricsAddr returns the address of the metrics listener, or nil.
func (r *Relay) MetricsAddr() net.Addr { return r.metricsAddr }

// ready reports why the relay should not get traffic, or nil.
func (r *Relay) ready() error {
	if r.stopping.Load() {
		return errors.New("shutting down")
	}
	if r.ln == nil {
		return errors.New("not listening")
	}
	if r.Config() == nil {
		return errors.New("no configuration loaded")
	}
	if err := r.recoverErr.Load(); err != nil {
		return fmt.Errorf("the queue could not be recovered: %w", *err)
	}
	if loaded, total, done := r.queue.recovering(); !done {
		return fmt.Errorf("recovering the queue: %d of %d spooled messages loaded (mail is accepted meanwhile)", loaded, total)
	}
	f, err := os.CreateTemp(filepath.Join(r.store.Dir(), "tmp"), "readyz-")
	if err != nil {
		return fmt.Errorf("spool not writable: %w", err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}
