// Package relay is tlsrelay's mail path: the SMTP front door that accepts
// plain SMTP from local applications, the durable queue, and the delivery
// workers that forward each message only over TLS verified by policy.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"net/http"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/address"
	"tlsrelay/relay/config"
	"tlsrelay/relay/metrics"
	"tlsrelay/relay/oauth"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/tlsrpt"
	"tlsrelay/relay/upstream"
)

// Options are the parts of a Relay that are not in the configuration
// file; the zero value is right for production.
type Options struct {
	Logger *slog.Logger
	// Clock is the time used to verify certificates; nil means now.
	Clock policy.Clock
	// Level, if set, is the logger's level, changed on reload.
	Level *slog.LevelVar
	// MXDial, for tests only, replaces the TCP dialing of delivery to
	// mail exchangers (upstream = "mx"): port 25 of each MX host's
	// address and port 443 of MTA-STS policy hosts, so that tests reach
	// servers on loopback ports. Nil in production.
	MXDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Relay is a running tlsrelay.
type Relay struct {
	cfg    atomic.Pointer[config.Config]
	log    *slog.Logger
	store  *spool.Store
	clock  policy.Clock
	level  *slog.LevelVar
	queue  *queue
	server *smtp.Server
	ln     net.Listener
	tlsLn  net.Listener // implicit_tls_listen, if configured
	conns  connCounter
	// authFailures slows down password guessing per client address.
	authFailures failureTracker
	metrics      *metrics.Metrics
	pool         *upstream.Pool
	tokens       *oauth.Registry
	metricsSrv   *http.Server
	metricsAddr  net.Addr
	stopping     atomic.Bool
	// recoverErr is why the queue could not be recovered, if it could not.
	recoverErr atomic.Pointer[error]

	served  chan error // Serve's result, per listener
	unlock  func()     // releases the spool lock
	control net.Listener
	once    sync.Once
	expiry  expiryWarnings

	// gates admits deliveries under the destinations in force (see
	// policygate.go); reloading serializes reloads.
	gates     atomic.Pointer[gates]
	reloading sync.Mutex
	// limits holds each limited destination's *limit.Gate, by
	// *policy.Destination (see limits.go).
	limits sync.Map

	// mxDial is Options.MXDial; reports keeps the TLS-RPT reports of MX
	// delivery.
	mxDial  func(ctx context.Context, network, addr string) (net.Conn, error)
	reports *tlsrpt.Store
	// stopTLSRPT stops the sending of the reports, if it runs.
	stopTLSRPT func()
	// mxHops keeps the hops of delivery to mail exchangers (see mxHop).
	mxHops hopCache
	// drops remembers the imported messages handled (see DropTaken).
	drops dropsSeen
}

// New opens the spool, recovers queued messages and prepares the SMTP
// server; Start begins listening and delivering.
func New(cfg *config.Config, opts Options) (*Relay, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	store, err := spool.Open(cfg.Queue.Dir)
	if err != nil {
		return nil, err
	}
	store.SetLogger(opts.Logger)
	r := &Relay{
		log:     opts.Logger,
		store:   store,
		clock:   opts.Clock,
		level:   opts.Level,
		served:  make(chan error, 2),
		mxDial:  opts.MXDial,
		reports: &tlsrpt.Store{Dir: TLSRPTDir(cfg.Queue.Dir), Org: cfg.Server.Hostname},
	}
	gs := newGates(cfg.Table, nil)
	r.gates.Store(&gs)
	r.reports.OnError = func(err error) {
		r.log.Warn("cannot write the TLS-RPT reports; keeping the counts to try again", "error", err)
	}
	r.cfg.Store(cfg)
	r.queue = newQueue(r)
	r.pool = upstream.NewPool(cfg.Queue.UpstreamIdleTimeout.Duration, cfg.Queue.UpstreamMaxMessages,
		cfg.Queue.UpstreamMaxAge.Duration, opts.Clock)
	r.metrics = metrics.New(r.queue.stats)
	r.tokens = oauth.NewRegistry(oauth.StatusFileIn(cfg.Queue.Dir))
	r.tokens.Observe = func(dest, result string) { r.metrics.TokenRequests.WithLabelValues(dest, result).Inc() }
	r.metrics.TokenExpiry = r.tokens.Expiries
	r.server = r.newServer(cfg)
	return r, nil
}

// Offline prepares r for queue operations without serving: it takes the
// spool's lock (failing if a relay runs) and loads the queue. Deliveries
// are left to the next `serve`.
func (r *Relay) Offline() (release func(), err error) {
	unlock, err := r.store.Lock()
	if err != nil {
		return nil, err
	}
	if err := r.queue.recover(); err != nil {
		unlock()
		return nil, err
	}
	r.queue.recovered.Store(true)
	return unlock, nil
}

// Config returns the configuration in force.
func (r *Relay) Config() *config.Config { return r.cfg.Load() }

// Start recovers the spool, listens on the configured address and starts
// the delivery workers. It returns once the relay accepts connections. The
// spool is made consistent first (a journal damaged by a crash is read
// and salvaged, messages never acknowledged are removed), so that the
// listener only accepts connections it greets at once; the queue then
// learns the spooled messages in the background while mail is accepted and
// delivered, and /readyz and the log say when that is complete.
func (r *Relay) Start() (err error) {
	cfg := r.Config()
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	unlock, err := r.store.Lock()
	if err != nil {
		return err
	}
	r.unlock = unlock
	undo = append(undo, unlock)
	ids, err := r.queue.recoverSpool()
	if err != nil {
		return fmt.Errorf("recover spool %s: %w", r.store.Dir(), err)
	}
	// No TCP keep-alive on the front door: sessions end on their own
	// timeouts, and keep-alive costs four setsockopt calls per connection.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Server.Listen, err)
	}
	r.ln = ln
	undo = append(undo, func() { ln.Close() })
	if r.control, err = r.listenControl(); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	undo = append(undo, func() { r.control.Close() })
	if cfg.Server.ImplicitTLSListen != "" {
		if r.tlsLn, err = lc.Listen(context.Background(), "tcp", cfg.Server.ImplicitTLSListen); err != nil {
			return fmt.Errorf("listen on %s (implicit_tls_listen): %w", cfg.Server.ImplicitTLSListen, err)
		}
		undo = append(undo, func() { r.tlsLn.Close() })
	}
	if cfg.Metrics.Listen != "" {
		if err := r.serveMetrics(cfg.Metrics.Listen); err != nil {
			return fmt.Errorf("metrics listener %s: %w", cfg.Metrics.Listen, err)
		}
	}
	r.queue.start(cfg.Queue.Workers)
	go r.recoverQueue(ids)
	r.startTLSRPTSender()
	if r.tlsLn != nil {
		go func() {
			r.served <- r.server.Serve(&filterListener{Listener: r.tlsLn, relay: r, tlsConfig: r.server.TLSConfig})
		}()
	}
	go func() {
		r.served <- r.server.Serve(&filterListener{Listener: ln, relay: r})
	}()
	r.log.Info("tlsrelay listening", "addr", ln.Addr().String(), "spool", r.store.Dir(),
		"destinations", len(cfg.Table.Destinations()), "queued", len(ids))
	return nil
}

// recoverQueue makes the queue learn the spooled messages ids while the
// relay already serves, and says when it is done.
func (r *Relay) recoverQueue(ids []string) {
	start := time.Now()
	if err := r.queue.load(ids); err != nil {
		// The spool cannot be read (not one message's fault): the messages
		// not loaded stay in the spool for the next start, and readiness
		// says so.
		r.recoverErr.Store(&err)
		r.log.Error("cannot recover the queue; the messages not loaded stay in the spool until the next start", "error", err)
		return
	}
	r.queue.recovered.Store(true)
	if len(ids) > 0 {
		r.log.Info("recovered queued messages", "count", len(ids), "took", time.Since(start).Round(time.Millisecond).String())
	}
}

// Addr returns the address the relay listens on.
func (r *Relay) Addr() net.Addr { return r.ln.Addr() }

// ImplicitTLSAddr returns the implicit TLS listener's address, or nil.
func (r *Relay) ImplicitTLSAddr() net.Addr {
	if r.tlsLn == nil {
		return nil
	}
	return r.tlsLn.Addr()
}

// Shutdown stops accepting, lets open sessions finish (until ctx ends),
// then stops the workers, giving in-flight deliveries the same grace.
// Everything accepted stays in the spool for the next start.
func (r *Relay) Shutdown(ctx context.Context) error {
	var err error
	r.once.Do(func() {
		r.log.Info("tlsrelay shutting down")
		r.stopping.Store(true)
		err = r.server.Shutdown(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			r.log.Warn("sessions still open at shutdown deadline; closing them (their clients had no 250 and will retry)")
			r.server.Close()
		}
		if r.stopTLSRPT != nil {
			r.stopTLSRPT()
		}
		r.queue.stop(ctx)
		if err := r.reports.Close(); err != nil {
			r.log.Warn("cannot write the TLS-RPT reports", "error", err)
		}
		r.pool.Close()
		if r.control != nil {
			r.control.Close()
		}
		if r.metricsSrv != nil {
			r.metricsSrv.Close()
		}
		if r.unlock != nil {
			r.unlock()
		}
		r.log.Info("tlsrelay stopped", "queued", r.queue.size())
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// Done receives the SMTP server's error once it stops serving, so that a
// caller notices the listener failing.
func (r *Relay) Done() <-chan error { return r.served }

// QueueSize returns the number of messages in the queue.
func (r *Relay) QueueSize() int { return r.queue.size() }

// route chooses the destination for mail from sender (the zero Address
// for <>) to a recipient at domain, under the policy in force.
func (r *Relay) route(sender address.Address, domain string) *policy.Destination {
	return r.Config().Table.Choose(policySender(sender), domain)
}

// policySender is the sender as routing sees it.
func policySender(a address.Address) policy.Sender {
	return policy.Sender{Local: a.Local, Domain: a.Domain}
}

// senderOf parses a spooled envelope sender (canonical, "" for <>) for
// routing; one that does not parse (it always does: the spool keeps the
// parsed form) routes as the null sender, by recipient alone.
func senderOf(from string) policy.Sender {
	if from == "" {
		return policy.Sender{}
	}
	a, err := address.Parse(from, true)
	if err != nil {
		return policy.Sender{}
	}
	return policySender(a)
}

func (r *Relay) now() time.Time {
	if r.clock != nil {
		return r.clock()
	}
	return time.Now()
}

// dialer returns an upstream dialer for the configuration in force.
func (r *Relay) dialer() *upstream.Dialer {
	cfg := r.Config()
	return &upstream.Dialer{LocalName: cfg.Server.Hostname, Timeout: cfg.Queue.ConnectTimeout.Duration, Clock: r.clock, Tokens: r.tokens,
		DialContext: r.mxDial}
}
