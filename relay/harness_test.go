package relay

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/config"
	"tlsrelay/relay/sink"
)

// pki is a throwaway CA written to a file a policy can name in ca_file.
type pki struct {
	ca     *certgen.CA
	caFile string
}

func newPKI(t testing.TB, name string) *pki {
	t.Helper()
	ca, err := certgen.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ca.pem")
	if err := certgen.WriteCertFile(f, ca.Cert); err != nil {
		t.Fatal(err)
	}
	return &pki{ca: ca, caFile: f}
}

// leaf issues a certificate for name, valid now.
func (p *pki) leaf(t testing.TB, name string) *certgen.Issued {
	t.Helper()
	iss, err := p.ca.Issue(certgen.Options{CommonName: name, DNSNames: []string{name}})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func startSink(t testing.TB, o sink.Options) *sink.Sink {
	t.Helper()
	s, err := sink.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// logBuffer collects the relay's log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testRelay struct {
	*Relay
	logs *logBuffer
	cfg  *config.Config
}

// baseConfig is the [server] and [queue] part of a test configuration;
// tests append [[destination]] tables. Retries are fast so that tests of
// the queue finish quickly.
func baseConfig(spool string) string {
	return fmt.Sprintf(`
[server]
listen = "127.0.0.1:0"
hostname = "relay.test"
max_message_bytes = 100000
max_recipients = 5

[queue]
dir = %q
retry_min = "50ms"
retry_max = "200ms"
max_age = "1h"
workers = 4
connect_timeout = "5s"
delivery_timeout = "20s"
`, spool)
}

// destination renders one [[destination]] table for a test upstream.
func destination(domain, upstream, caFile, name string, extra ...string) string {
	s := fmt.Sprintf(`
[[destination]]
domains = [%q]
upstream = %q
ca_file = %q
server_name = %q
require_hostname = [%q]
`, domain, upstream, caFile, name, name)
	for _, e := range extra {
		s += e + "\n"
	}
	return s
}

func startRelay(t *testing.T, cfgText string) *testRelay {
	t.Helper()
	return startRelayAt(t, cfgText, nil)
}

// startRelayAt is startRelay with a clock the test moves.
func startRelayAt(t *testing.T, cfgText string, clock *testClock) *testRelay {
	t.Helper()
	var opts Options
	if clock != nil {
		opts.Clock = clock.now
	}
	return startRelayWith(t, cfgText, opts)
}

// startRelayWith is startRelay with Options (its Logger is the test's).
func startRelayWith(t *testing.T, cfgText string, opts Options) *testRelay {
	t.Helper()
	cfg, err := config.Parse("test.toml", cfgText)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, cfgText)
	}
	logs := &logBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	tr := &testRelay{Relay: r, logs: logs, cfg: cfg}
	t.Cleanup(func() {
		tr.stop()
		if t.Failed() {
			t.Logf("relay log:\n%s", logs.String())
		}
	})
	return tr
}

func (tr *testRelay) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tr.Shutdown(ctx)
}

// submit sends one message over plain SMTP, as a legacy application
// does, and returns the reply to DATA (or the first error).
func submit(addr, from string, to []string, body string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		return "", err
	}
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, rc := range to {
		if err := c.Rcpt(rc, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

func smtpCode(err error) int {
	if se, ok := err.(*smtp.SMTPError); ok {
		return se.Code
	}
	return 0
}

// freePort returns a loopback address nothing listens on (yet).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for: %s", timeout, what)
}

const testBody = "From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: test\r\n\r\nline one\r\n.a line starting with a dot\r\n\xc3\xa9t\xc3\xa9 8bit\r\n"

func parseConfig(src string) (*config.Config, error) { return config.Parse("test.toml", src) }
