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

	"tlsrelay/relay/sink"
)

// slowRetries is a test configuration whose backoff is an hour: any
// message that goes again within the test went because its destination
// worked again, not because its timer fired.
func slowRetries(spool string) string {
	cfg := strings.Replace(baseConfig(spool), `retry_min = "50ms"`, `retry_min = "1h"`, 1)
	return strings.Replace(cfg, `retry_max = "200ms"`, `retry_max = "2h"`, 1)
}

// TestWaitingMailGoesWhenTheDestinationWorksAgain: messages deferred
// because the upstream could not be reached go as soon as a transaction
// with it completes again, not after their backoff; a message the upstream
// itself deferred with a 4xx keeps its backoff.
func TestWaitingMailGoesWhenTheDestinationWorksAgain(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	tr := startRelay(t, slowRetries(t.TempDir())+destination("example.test", addr, p.caFile, "mx.example.test"))

	for i := 0; i < 3; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "three deferrals", func() bool {
		return strings.Count(tr.logs.String(), "message deferred") >= 3
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
	// The upstream is back, but nothing has shown it yet: the waiting
	// messages stay put, and so does one the upstream defers with a 4xx.
	if _, err := submit(tr.Addr().String(), "grey@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	eventually(t, 10*time.Second, "the upstream's 4xx to the greylisted sender", func() bool { return greylisted.Load() == 1 })
	time.Sleep(300 * time.Millisecond)
	if n := up.Count(); n != 0 {
		t.Fatalf("%d messages went before any transaction completed; their backoff is an hour", n)
	}

	// The first transaction that completes shows the destination works.
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !up.Wait(4, 10*time.Second) {
		t.Fatalf("the upstream works again, yet only %d of the new and the 3 waiting messages went", up.Count())
	}
	if !strings.Contains(tr.logs.String(), "messages=3") || !strings.Contains(tr.logs.String(), "destination works again") {
		t.Error("no log line says the waiting messages were released")
	}

	// Further successes must not retry the greylisted message early.
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !up.Wait(5, 10*time.Second) {
		t.Fatal("a new message was not delivered")
	}
	time.Sleep(300 * time.Millisecond)
	if n := greylisted.Load(); n != 1 {
		t.Errorf("the greylisted message was tried %d times, want 1: an upstream's 4xx keeps the message's backoff", n)
	}
	if n := tr.QueueSize(); n != 1 {
		t.Errorf("queue holds %d messages, want only the greylisted one", n)
	}

	// A destination releases its backlog at most once per retry_min: the
	// upstream goes away and comes back within the hour, and messages that
	// waited meanwhile keep their backoff.
	up.Close()
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	eventually(t, 10*time.Second, "a fourth failed connect attempt", func() bool {
		return strings.Count(tr.logs.String(), "failure=connect") >= 4
	})
	again := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !again.Wait(1, 10*time.Second) {
		t.Fatal("a new message was not delivered")
	}
	time.Sleep(300 * time.Millisecond)
	if n := again.Count(); n != 1 {
		t.Errorf("%d messages went; the one waiting since the second outage should keep its backoff, as the backlog was released less than retry_min ago", n)
	}
}

// TestWaitingIsRecoveredAfterRestart: what a message waits for is read
// back from its queue state, so a restart does not turn "goes when the
// upstream works" into "goes in an hour". The failure here is a TLS one:
// the upstream's certificate names another host until it is replaced.
func TestWaitingIsRecoveredAfterRestart(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	spool := t.TempDir()
	cfg := slowRetries(spool) + destination("example.test", addr, p.caFile, "mx.example.test")

	wrong, err := sink.Start(sink.Options{Addr: addr, Cert: p.leaf(t, "other.example.test").TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	first := startRelay(t, cfg)
	for i := 0; i < 2; i++ {
		if _, err := submit(first.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "two hostname_mismatch verdicts", func() bool {
		return strings.Count(first.logs.String(), "tls_failure=hostname_mismatch") >= 2
	})
	first.stop()
	wrong.Close()

	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	second := startRelay(t, cfg)
	time.Sleep(300 * time.Millisecond)
	if n := up.Count(); n != 0 {
		t.Fatalf("%d messages went at restart; their backoff is an hour", n)
	}
	if _, err := submit(second.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !up.Wait(3, 10*time.Second) {
		t.Fatalf("after a restart, %d of 3 messages went once the upstream's certificate was fixed", up.Count())
	}
}

// TestOwnSuccessDoesNotUseUpTheRelease: a waiting message that goes by
// itself (here an operator's retry) releases nobody, so it must not count
// as the destination's one release per retry_min either.
func TestOwnSuccessDoesNotUseUpTheRelease(t *testing.T) {
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
	eventually(t, 20*time.Second, "every message to the dead destination deferred", func() bool {
		return strings.Count(tr.logs.String(), "message deferred") >= dead
	})
	if n := accepted(); n > 2 {
		t.Errorf("the dead destination was tried %d times for %d messages; after the first timeouts (one per worker) it should be suspended", n, dead)
	}
	if !strings.Contains(tr.logs.String(), "not tried again until") {
		t.Error("no deferral says the destination was suspended")
	}

	// An operator's retry means a real attempt: it lifts the suspension.
	before := accepted()
	if res := tr.Control(ControlRequest{Op: OpRetry}); res.Error != "" {
		t.Fatalf("retry -all: %s", res.Error)
	}
	eventually(t, 10*time.Second, "a real attempt after the operator's retry", func() bool { return accepted() > before })
}
