package relay

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/config"
	"tlsrelay/relay/oauth"
	"tlsrelay/relay/sink"
)

// reload parses cfgText and puts it in force, as SIGHUP does.
func (tr *testRelay) reload(t *testing.T, cfgText string) {
	t.Helper()
	cfg, err := config.Parse("test.toml", cfgText)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, cfgText)
	}
	tr.Reload(cfg)
}

// TestReloadBetweenRcptAndData: a reject-mode session that passed RCPT
// under a policy a reload then replaced (its CA is no longer trusted) is
// not delivered under the old one: DATA gets a 451 saying the policy
// changed, and the upstream is not even connected to. A reload that
// leaves the destination as it was does not disturb such a session.
func TestReloadBetweenRcptAndData(t *testing.T) {
	p, other := newPKI(t, "Test CA"), newPKI(t, "Other CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	base := baseConfig(t.TempDir())
	trusting := base + destination("example.test", up.Addr(), p.caFile, "mx.example.test", `on_failure = "reject"`)
	tr := startRelay(t, trusting)

	// transaction runs MAIL and RCPT, then reload, then DATA.
	transaction := func(reload func()) error {
		c, err := smtp.Dial(tr.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("app.test"); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("app@sender.test", nil); err != nil {
			t.Fatal(err)
		}
		if err := c.Rcpt("rcpt@example.test", nil); err != nil {
			t.Fatal(err)
		}
		reload()
		if err := c.Rcpt("second@example.test", nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write([]byte(testBody)); err != nil {
			return err
		}
		return w.Close()
	}

	err := transaction(func() {
		tr.reload(t, base+destination("example.test", up.Addr(), other.caFile, "mx.example.test", `on_failure = "reject"`))
	})
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code != 451 || !strings.Contains(se.Message, "policy") || !strings.Contains(se.Message, "send the message again") {
		t.Fatalf("RCPT after a reload that replaced the destination's policy: got %v, want 451 saying the policy changed and to send again", err)
	}
	if n, s := up.Count(), up.Sessions(); n != 0 || s != 0 {
		t.Fatalf("the upstream got %d messages over %d connections under a policy no longer in force", n, s)
	}

	// The same again, and a reload in between that changes nothing.
	tr.reload(t, trusting)
	if err := transaction(func() { tr.reload(t, trusting) }); err != nil {
		t.Fatalf("DATA after a reload that left the destination unchanged: %v", err)
	}
	if n := up.Count(); n != 1 {
		t.Fatalf("the upstream got %d messages, want 1", n)
	}

	// A reload between the last RCPT and DATA: DATA gets the 451.
	tr.reload(t, trusting)
	c, err := smtp.Dial(tr.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("rcpt@example.test", nil); err != nil {
		t.Fatal(err)
	}
	tr.reload(t, base+destination("example.test", up.Addr(), other.caFile, "mx.example.test", `on_failure = "reject"`))
	w, err := c.Data()
	if err == nil {
		w.Write([]byte(testBody))
		err = w.Close()
	}
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 451 || !strings.Contains(se.Message, "send the message again") {
		t.Fatalf("DATA after a reload between RCPT and DATA: got %v, want 451 saying the policy changed", err)
	}
	if n := up.Count(); n != 1 {
		t.Fatalf("the upstream got %d messages, want still 1", n)
	}
}

// TestReloadBetweenTwoDeliveriesOfOneMessage: a queued message for two
// destinations is routed once, then delivered to one after the other.
// A reload while the first delivery is under way replaces the second
// destination's policy with one that no longer trusts its upstream: the
// second delivery goes under the new policy (deferred with its TLS
// verdict), not under the old one it was routed by. Once a further reload
// trusts the upstream again, the deferred recipient is delivered.
func TestReloadBetweenTwoDeliveriesOfOneMessage(t *testing.T) {
	p, other := newPKI(t, "Test CA"), newPKI(t, "Other CA")
	release := make(chan struct{})
	var held atomic.Bool
	first := startSink(t, sink.Options{Cert: p.leaf(t, "mx.a-first.test").TLSCertificate(),
		OnMessage: func(sink.Message) {
			held.Store(true)
			<-release // holds the reply to the body until the reload is done
		}})
	second := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	base := baseConfig(t.TempDir()) + destination("a-first.test", first.Addr(), p.caFile, "mx.a-first.test")
	tr := startRelay(t, base+destination("example.test", second.Addr(), p.caFile, "mx.example.test"))

	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@a-first.test", "rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the first delivery under way", held.Load)
	tr.reload(t, base+destination("example.test", second.Addr(), other.caFile, "mx.example.test"))
	close(release)

	eventually(t, 10*time.Second, "the second delivery deferred with the new policy's verdict", func() bool {
		return strings.Contains(tr.logs.String(), "tls_failure=unknown_authority")
	})
	if !first.Wait(1, 5*time.Second) {
		t.Fatal("the first destination did not get the message")
	}
	if n, s := second.Count(), second.Sessions(); n != 0 {
		t.Fatalf("the second destination got the message (over %d connections) under the policy the reload replaced", s)
	}
	if tr.QueueSize() != 1 {
		t.Fatalf("queue holds %d messages, want the one deferred for example.test", tr.QueueSize())
	}

	tr.reload(t, base+destination("example.test", second.Addr(), p.caFile, "mx.example.test"))
	if !second.Wait(1, 10*time.Second) {
		t.Fatal("the deferred recipient was not delivered under the policy that trusts its upstream")
	}
	eventually(t, 5*time.Second, "message done", func() bool { return tr.QueueSize() == 0 })
	if n := first.Count(); n != 1 {
		t.Errorf("the first destination got the message %d times, want 1", n)
	}
}

// TestReloadClosesPooledConnectionsOfChangedDestinations: a reload closes
// the pooled connections of a destination whose policy changed — here
// its CA file, rewritten under the same name, so the configuration text
// is the same — and keeps those of an unchanged one.
func TestReloadClosesPooledConnectionsOfChangedDestinations(t *testing.T) {
	p, other := newPKI(t, "Test CA"), newPKI(t, "Other CA")
	same := startSink(t, sink.Options{Cert: p.leaf(t, "mx.same.test").TLSCertificate()})
	changed := startSink(t, sink.Options{Cert: p.leaf(t, "mx.changed.test").TLSCertificate()})
	caFile := filepath.Join(t.TempDir(), "changed-ca.pem")
	if err := certgen.WriteCertFile(caFile, p.ca.Cert); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(t.TempDir()) +
		destination("same.test", same.Addr(), p.caFile, "mx.same.test") +
		destination("changed.test", changed.Addr(), caFile, "mx.changed.test")
	tr := startRelay(t, cfg)

	send := func(n int) {
		t.Helper()
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@same.test", "rcpt@changed.test"}, testBody); err != nil {
			t.Fatal(err)
		}
		if !same.Wait(n, 10*time.Second) || !changed.Wait(n, 10*time.Second) {
			t.Fatalf("message %d not delivered to both", n)
		}
		eventually(t, 5*time.Second, "message done", func() bool { return tr.QueueSize() == 0 })
	}
	send(1)
	if n := tr.pool.Idle(); n != 2 {
		t.Fatalf("%d pooled connections, want 2", n)
	}
	// The CA file now also holds another CA: a different policy, still
	// trusting the upstream.
	if err := certgen.WriteCertFile(caFile, p.ca.Cert, other.ca.Cert); err != nil {
		t.Fatal(err)
	}
	tr.reload(t, cfg)
	if n := tr.pool.Idle(); n != 1 {
		t.Fatalf("after the reload %d pooled connections, want 1 (the unchanged destination's)", n)
	}
	send(2)
	if s := same.Sessions(); s != 1 {
		t.Errorf("the unchanged destination used %d connections, want 1: a reload that does not change it keeps its pooled connection", s)
	}
	if s := changed.Sessions(); s != 2 {
		t.Errorf("the changed destination used %d connections, want 2: its connection was verified under the old CA file", s)
	}
}

// testClock is a clock a test moves forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// TestPooledConnectionsAgeOut: a pooled connection is not reused once it
// is upstream_max_age old, nor past the expiry of a certificate of its
// verified chain (however busy it is kept).
func TestPooledConnectionsAgeOut(t *testing.T) {
	deliver := func(t *testing.T, tr *testRelay, up *sink.Sink, n int) {
		t.Helper()
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatal(err)
		}
		if !up.Wait(n, 10*time.Second) {
			t.Fatalf("message %d not delivered", n)
		}
		eventually(t, 5*time.Second, "message done", func() bool { return tr.QueueSize() == 0 })
	}

	t.Run("max_age", func(t *testing.T) {
		p := newPKI(t, "Test CA")
		up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
		clock := &testClock{}
		cfg := strings.Replace(baseConfig(t.TempDir()), "[queue]\n", "[queue]\nupstream_max_age = \"10m\"\n", 1)
		tr := startRelayAt(t, cfg+destination("example.test", up.Addr(), p.caFile, "mx.example.test"), clock)
		deliver(t, tr, up, 1)
		clock.advance(9 * time.Minute)
		deliver(t, tr, up, 2)
		if s := up.Sessions(); s != 1 {
			t.Fatalf("2 messages within upstream_max_age used %d connections, want 1", s)
		}
		clock.advance(2 * time.Minute)
		deliver(t, tr, up, 3)
		if s := up.Sessions(); s != 2 {
			t.Fatalf("a connection 11 minutes old was reused with upstream_max_age = 10m (%d connections, want 2)", s)
		}
	})

	t.Run("certificate_expiry", func(t *testing.T) {
		p := newPKI(t, "Test CA")
		leaf, err := p.ca.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		up := startSink(t, sink.Options{Cert: leaf.TLSCertificate()})
		clock := &testClock{}
		cfg := strings.Replace(baseConfig(t.TempDir()), "[queue]\n", "[queue]\nupstream_max_age = \"24h\"\n", 1)
		tr := startRelayAt(t, cfg+destination("example.test", up.Addr(), p.caFile, "mx.example.test"), clock)
		deliver(t, tr, up, 1)
		clock.advance(31 * time.Minute)
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the next message deferred: the certificate has expired", func() bool {
			return strings.Contains(tr.logs.String(), "tls_failure=expired")
		})
		if n := up.Count(); n != 1 {
			t.Fatalf("the upstream got %d messages, want 1: the second went over a connection verified with a certificate that has expired since", n)
		}
	})
}

// TestReloadStopsADeliveryStillConnecting: a reject-mode delivery that is
// still connecting under a policy a reload replaces never begins its
// transaction; Reload returns once it has stopped, and the client is
// asked to send the message again.
func TestReloadStopsADeliveryStillConnecting(t *testing.T) {
	p, other := newPKI(t, "Test CA"), newPKI(t, "Other CA")
	hang, err := sink.StartSilent("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hang.Close() })
	base := strings.Replace(baseConfig(t.TempDir()), `connect_timeout = "5s"`, `connect_timeout = "1s"`, 1)
	tr := startRelay(t, base+destination("example.test", hang.Addr(), p.caFile, "mx.example.test", `on_failure = "reject"`))

	replied := make(chan error, 1)
	go func() {
		_, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
		replied <- err
	}()
	eventually(t, 5*time.Second, "the relay connecting to the upstream", func() bool { return hang.Accepted() == 1 })
	tr.reload(t, base+destination("example.test", hang.Addr(), other.caFile, "mx.example.test", `on_failure = "reject"`))
	logs := tr.logs.String()
	stopped, reloaded := strings.Index(logs, "stopped: the destination's policy was replaced"), strings.Index(logs, "configuration reloaded")
	if stopped < 0 || reloaded < stopped {
		t.Fatal("Reload returned before the delivery under the policy it replaced had stopped")
	}
	select {
	case err := <-replied:
		se, ok := err.(*smtp.SMTPError)
		if !ok || se.Code != 451 || !strings.Contains(se.Message, "policy") {
			t.Fatalf("got %v, want 451 saying the policy changed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply to DATA")
	}
	if !strings.Contains(tr.logs.String(), "deliveries_waited_for=1") {
		t.Error("the reload's log line does not count the delivery it waited for")
	}
}

// TestReloadSeesAChangedClientSecret: a client secret rotated in its file,
// with the configuration text unchanged, makes the destination a changed
// one, so a reload puts the new secret in force.
func TestReloadSeesAChangedClientSecret(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	compile := func(content string) *policy.Destination {
		t.Helper()
		if err := os.WriteFile(secret, []byte(content), 0o400); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(secret, 0o600)
		d, err := policy.Compile(policy.Spec{Domains: []string{"example.com"}, Upstream: "smtp.example.com:587",
			OAuth: &policy.OAuthSpec{Flow: "client_credentials", Mailbox: "a@example.com", ClientID: "c",
				ClientSecretFile: secret, TokenURL: "https://idp.example.test/token", Scopes: []string{"s"}}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	old, same, rotated := compile("first"), compile("first"), compile("second")
	if !samePolicy(old, same) {
		t.Error("an unchanged OAuth destination counts as changed")
	}
	if samePolicy(old, rotated) {
		t.Error("a destination whose client secret changed counts as unchanged: the reload would keep the old secret")
	}
}

// TestReloadSeesAChangedOAuthCA: the CA file that verifies a token
// endpoint, rewritten under the same name, makes the destination a
// changed one with a new token source: a CA the operator removed is not
// trusted with the client secret after the reload.
func TestReloadSeesAChangedOAuthCA(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "idp-ca.pem")
	t.Setenv("RELOAD_TEST_SECRET", "s")
	compile := func(p *pki) *policy.Destination {
		t.Helper()
		if err := certgen.WriteCertFile(caFile, p.ca.Cert); err != nil {
			t.Fatal(err)
		}
		d, err := policy.Compile(policy.Spec{Domains: []string{"example.com"}, Upstream: "smtp.example.com:587",
			OAuth: &policy.OAuthSpec{Flow: "client_credentials", Mailbox: "a@example.com", ClientID: "c",
				ClientSecretEnv: "RELOAD_TEST_SECRET", TokenURL: "https://idp.example.test/token", Scopes: []string{"s"}, CAFile: caFile}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	one, two := newPKI(t, "IdP CA one"), newPKI(t, "IdP CA two")
	old, same, replaced := compile(one), compile(one), compile(two)
	if !samePolicy(old, same) {
		t.Error("an unchanged OAuth CA counts as a change")
	}
	if samePolicy(old, replaced) {
		t.Error("a token endpoint CA rewritten under the same name counts as unchanged: the old CA stays trusted after the reload")
	}
	reg := oauth.NewRegistry("")
	if reg.Source(old) == reg.Source(replaced) {
		t.Error("the token source verified under the old CA is reused for the new one")
	}
}
