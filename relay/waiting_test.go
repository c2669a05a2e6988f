package relay

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/config"
	"tlsrelay/relay/sink"
)

// slowRetries is a test configuration whose backoff is an hour: any
// message that goes again within the test went because its destination
// worked again, not because its timer fired.
func slowRetries(spool string) string {
	cfg := strings.Replace(baseConfig(spool), `retry_min = "50ms"`, `retry_min = "1h"`, 1)
	return strings.Replace(cfg, `retry_max = "200ms"`, `retry_max = "2h"`, 1)
}

// quickProbes makes a suspended destination probed after d instead of
// retry_min, for the rest of the test: the tests keep an hour's backoff, so
// that a message that goes went because its destination came back.
func quickProbes(t *testing.T, d time.Duration) {
	old := probeAfter
	probeAfter = func(*config.Config) time.Duration { return d }
	t.Cleanup(func() { probeAfter = old })
}

// TestWaitingMailGoesWhenTheDestinationWorksAgain: messages waiting because
// the upstream could not be reached go as soon as a probe shows it works
// again, not after their backoff; a message the upstream itself deferred
// with a 4xx keeps its backoff.
func TestWaitingMailGoesWhenTheDestinationWorksAgain(t *testing.T) {
	quickProbes(t, 300*time.Millisecond)
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	tr := startRelay(t, slowRetries(t.TempDir())+destination("example.test", addr, p.caFile, "mx.example.test"))

	for i := 0; i < 3; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "the destination down", func() bool {
		return strings.Contains(tr.logs.String(), "destination down")
	})

	var greylisted atomic.Int64
	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		RefuseMail: func(from string) *smtp.SMTPError {
			if strings.HasPrefix(from, "grey@") {
				greylisted.Add(1)
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "greylisted, try later"}
			}
			return nil
		}})
	// The next probe finds the upstream back: every waiting message goes,
	// although the one that was tried has an hour's backoff.
	if !up.Wait(3, 10*time.Second) {
		t.Fatalf("the upstream works again, yet only %d of the 3 waiting messages went", up.Count())
	}
	eventually(t, 5*time.Second, "the destination back", func() bool {
		return strings.Contains(tr.logs.String(), "destination back")
	})

	// A 4xx from the upstream concerns the message, not the destination:
	// it keeps its backoff, and later successes do not retry it early.
	if _, err := submit(tr.Addr().String(), "grey@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	eventually(t, 10*time.Second, "the upstream's 4xx to the greylisted sender", func() bool { return greylisted.Load() == 1 })
	for i := 0; i < 2; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("submit: %v", err)
		}
	}
	if !up.Wait(5, 10*time.Second) {
		t.Fatal("new messages were not delivered")
	}
	time.Sleep(300 * time.Millisecond)
	if n := greylisted.Load(); n != 1 {
		t.Errorf("the greylisted message was tried %d times, want 1: an upstream's 4xx keeps the message's backoff", n)
	}
	if n := tr.QueueSize(); n != 1 {
		t.Errorf("queue holds %d messages, want only the greylisted one", n)
	}
	if n := strings.Count(tr.logs.String(), "destination down"); n != 1 {
		t.Errorf("%d lines say the destination is down, want 1", n)
	}
}

// TestDownDestinationIsProbedNotHammered: while a destination fails, its
// mail is not tried message by message: one probe per suspension, the
// rest waits without an attempt, a state file or a log line of its own;
// one line says it went down, a periodic summary says how much waits, one
// line says it came back, and then everything goes.
func TestDownDestinationIsProbedNotHammered(t *testing.T) {
	const probe = 250 * time.Millisecond
	quickProbes(t, probe)
	old := summaryEvery
	summaryEvery = 200 * time.Millisecond
	t.Cleanup(func() { summaryEvery = old })

	// The upstream accepts connections and closes them at once: every
	// attempt is counted, and each fails fast as connect.
	closer, err := sink.StartRaw(func(c *sink.RawConn) { c.Close() })
	if err != nil {
		t.Fatal(err)
	}
	addr := closer.Addr()
	p := newPKI(t, "Test CA")
	spoolDir := t.TempDir()
	tr := startRelay(t, slowRetries(spoolDir)+destination("example.test", addr, p.caFile, "mx.example.test"))

	const n = 40
	begin := time.Now()
	for i := 0; i < n; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{fmt.Sprintf("r%d@example.test", i)}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	time.Sleep(4 * probe)
	eventually(t, 10*time.Second, "a summary of the waiting mail", func() bool {
		return strings.Contains(tr.logs.String(), fmt.Sprintf("destination still down: mail waits for it\" destination=example.test waiting=%d", n))
	})
	attempts := closer.Accepted()
	elapsed := time.Since(begin)
	// The workers (4) may all be trying before the first failure is in;
	// after that, one probe per suspension.
	if limit := 4 + int(elapsed/probe) + 1; attempts > limit {
		t.Errorf("%d connection attempts in %v for %d messages; a down destination should be probed (at most %d), not tried per message", attempts, elapsed.Round(time.Millisecond), n, limit)
	}
	logs := tr.logs.String()
	if got := strings.Count(logs, "destination down"); got != 1 {
		t.Errorf("%d lines say the destination went down, want 1", got)
	}
	if got := strings.Count(logs, "message deferred"); got > attempts {
		t.Errorf("%d deferral lines for %d attempts: mail that was not tried logged a line of its own", got, attempts)
	}
	states, _ := os.ReadDir(filepath.Join(spoolDir, "state"))
	if len(states) > attempts {
		t.Errorf("%d state files for %d attempts: mail that was not tried was written", len(states), attempts)
	}
	if tr.QueueSize() != n {
		t.Fatalf("queue holds %d, want %d", tr.QueueSize(), n)
	}
	if v := downSince(t, tr); len(v) != 1 || v[0] < float64(begin.Unix()) {
		t.Errorf("tlsrelay_destination_down_since_timestamp_seconds = %v while the destination is down", v)
	}

	closer.Close()
	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	if !up.Wait(n, 10*time.Second) {
		t.Fatalf("the upstream is back, yet only %d of %d went", up.Count(), n)
	}
	eventually(t, 5*time.Second, "the queue empty", func() bool { return tr.QueueSize() == 0 })
	logs = tr.logs.String()
	if got := strings.Count(logs, "destination back"); got != 1 {
		t.Errorf("%d lines say the destination came back, want 1", got)
	}
	if len(up.Messages()) != n {
		t.Errorf("the upstream got %d messages, want each of %d once", len(up.Messages()), n)
	}
	if v := downSince(t, tr); len(v) != 0 {
		t.Errorf("down-since series %v once the destination is back, want none", v)
	}
}

// TestParkedMailIsStillBounced: mail waiting with a down destination's
// cohort is not forgotten by its deadlines: at max_age it bounces.
func TestParkedMailIsStillBounced(t *testing.T) {
	quickProbes(t, time.Hour)
	p := newPKI(t, "Test CA")
	senderMX := startSink(t, sink.Options{Cert: p.leaf(t, "mx.sender.test").TLSCertificate()})
	cfg := strings.Replace(baseConfig(t.TempDir()), `max_age = "1h"`, `max_age = "1s"`, 1) +
		destination("example.test", freePort(t), p.caFile, "mx.example.test") +
		destination("sender.test", senderMX.Addr(), p.caFile, "mx.sender.test")
	tr := startRelay(t, cfg)
	const n = 5
	for i := 0; i < n; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatal(err)
		}
	}
	if !senderMX.Wait(n, 10*time.Second) {
		t.Fatalf("%d of %d DSNs reached the sender", senderMX.Count(), n)
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
}

// TestOwnSuccessDoesNotUseUpTheRelease: a waiting message that goes by
// itself (here an operator's retry) releases nobody, so it must not count
// as the destination's one release per retry_min either.
func TestOwnSuccessDoesNotUseUpTheRelease(t *testing.T) {
	quickProbes(t, 300*time.Millisecond)
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	tr := startRelay(t, slowRetries(t.TempDir())+destination("example.test", addr, p.caFile, "mx.example.test"))
	cert := p.leaf(t, "mx.example.test").TLSCertificate()
	failedConnects := func(n int) {
		t.Helper()
		eventually(t, 10*time.Second, fmt.Sprintf("%d failed connect attempts", n), func() bool {
			return strings.Count(tr.logs.String(), "failure=connect") >= n
		})
	}

	reply, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	first := reply[strings.LastIndexByte(reply, ' ')+1:]
	failedConnects(1)
	up := startSink(t, sink.Options{Addr: addr, Cert: cert})
	if res := tr.Control(ControlRequest{Op: "retry", ID: first}); res.Error != "" {
		t.Fatalf("retry %s: %s", first, res.Error)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("the retried message did not go")
	}
	up.Close()

	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	failedConnects(2)
	again := startSink(t, sink.Options{Addr: addr, Cert: cert})
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !again.Wait(2, 10*time.Second) {
		t.Fatalf("%d of 2 went: the message waiting for the destination was not released by the first success since it waited", again.Count())
	}
}

// TestWaitingMessageStaysInTheOpenSegment: a deferred message in the
// journal segment still being appended to stays in the journal (moving it
// out would cost a new file and two fsyncs, and most go within minutes);
// once appends go elsewhere — here after a restart, which starts a new
// segment — its next deferral moves it to a file of its own, so old
// segments do not stay on disk for as long as it waits.
func TestWaitingMessageStaysInTheOpenSegment(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	spoolDir := t.TempDir()
	cfg := baseConfig(spoolDir) + destination("example.test", addr, p.caFile, "mx.example.test")

	first := startRelay(t, cfg)
	reply, err := submit(first.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	id := reply[strings.LastIndexByte(reply, ' ')+1:]
	eventually(t, 10*time.Second, "three failed attempts", func() bool {
		return strings.Count(first.logs.String(), "failure=connect") >= 3
	})
	if !first.store.InJournal(id) {
		t.Fatal("a message waiting in the open segment was moved out of the journal")
	}
	first.stop()

	second := startRelay(t, cfg)
	eventually(t, 10*time.Second, "a failed attempt after the restart", func() bool {
		return strings.Contains(second.logs.String(), "failure=connect")
	})
	eventually(t, 10*time.Second, "the message moved to a file of its own", func() bool {
		return !second.store.InJournal(id)
	})
	if _, err := os.Stat(filepath.Join(spoolDir, "msg", id)); err != nil {
		t.Fatalf("the waiting message is not in msg/: %v", err)
	}
	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("the message was not delivered from its file")
	}
}

// TestBlackholedDestinationDoesNotStarveOthers: a destination whose
// server accepts connections and never answers ties up a worker for
// connect_timeout per attempt. After the first such timeouts it is
// suspended: its other messages are deferred without trying, so the
// workers stay free for the destinations that work.
func TestBlackholedDestinationDoesNotStarveOthers(t *testing.T) {
	hang, err := sink.StartSilent("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hang.Close() })
	accepted := hang.Accepted

	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	cfg := strings.Replace(slowRetries(t.TempDir()), "workers = 4", "workers = 2", 1)
	cfg = strings.Replace(cfg, `connect_timeout = "5s"`, `connect_timeout = "1500ms"`, 1)
	tr := startRelay(t, cfg+destination("dead.test", hang.Addr(), p.caFile, "mx.example.test")+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test"))

	const dead = 6
	for i := 0; i < dead; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{fmt.Sprintf("r%d@dead.test", i)}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !up.Wait(1, 20*time.Second) {
		t.Fatal("the message to the working destination was not delivered")
	}
	eventually(t, 20*time.Second, "the dead destination down, its mail waiting", func() bool {
		return strings.Contains(tr.logs.String(), "destination down") && tr.QueueSize() == dead
	})
	time.Sleep(200 * time.Millisecond)
	if n := accepted(); n > 2 {
		t.Errorf("the dead destination was tried %d times for %d messages; after the first timeouts (one per worker) it should be suspended", n, dead)
	}

	// An operator's retry means a real attempt: it lifts the suspension.
	before := accepted()
	if res := tr.Control(ControlRequest{Op: OpRetry}); res.Error != "" {
		t.Fatalf("retry -all: %s", res.Error)
	}
	eventually(t, 10*time.Second, "a real attempt after the operator's retry", func() bool { return accepted() > before })
}

// downSince gathers tlsrelay_destination_down_since_timestamp_seconds.
func downSince(t *testing.T, tr *testRelay) []float64 {
	t.Helper()
	families, err := tr.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []float64
	for _, f := range families {
		if f.GetName() == "tlsrelay_destination_down_since_timestamp_seconds" {
			for _, m := range f.GetMetric() {
				out = append(out, m.GetGauge().GetValue())
			}
		}
	}
	return out
}

// TestDownDestinationWithTwoUpstreams: a destination is down only when
// every one of its upstreams is suspended; then its mail waits as a
// cohort, and each upstream is probed, not tried per message.
func TestDownDestinationWithTwoUpstreams(t *testing.T) {
	const probe = 250 * time.Millisecond
	quickProbes(t, probe)
	var closers []*sink.Raw
	for range 2 {
		c, err := sink.StartRaw(func(c *sink.RawConn) { c.Close() })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		closers = append(closers, c)
	}
	p := newPKI(t, "Test CA")
	hops := fmt.Sprintf("upstream = [%q, %q]", closers[0].Addr(), closers[1].Addr())
	dest := strings.Replace(destination("example.test", "x", p.caFile, "mx.example.test"), `upstream = "x"`, hops, 1)
	tr := startRelay(t, slowRetries(t.TempDir())+dest)

	const n = 30
	begin := time.Now()
	for i := 0; i < n; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{fmt.Sprintf("r%d@example.test", i)}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	time.Sleep(4 * probe)
	elapsed := time.Since(begin)
	for i, c := range closers {
		if limit := 4 + int(elapsed/probe) + 1; c.Accepted() > limit {
			t.Errorf("upstream %d got %d connections in %v for %d messages; want at most %d (probed, not tried per message)", i+1, c.Accepted(), elapsed.Round(time.Millisecond), n, limit)
		}
	}
	if got := strings.Count(tr.logs.String(), "destination down"); got != 1 {
		t.Errorf("%d lines say the destination went down, want 1:\n%s", got, tr.logs.String())
	}
}
