package relay

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"tlsrelay/relay/sink"
)

// TestRestartGreetsWhileTheQueueIsRecovered: with messages queued, a
// restarted relay greets and accepts mail at once while it is still
// learning its queue in the background; /readyz says it is recovering
// until it is done, and every message, old and new, is delivered once.
func TestRestartGreetsWhileTheQueueIsRecovered(t *testing.T) {
	quickProbes(t, time.Hour)
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	spoolDir := t.TempDir()
	cfg := slowRetries(spoolDir) + "\n[metrics]\nlisten = \"127.0.0.1:0\"\n" + destination("example.test", addr, p.caFile, "mx.example.test")

	first := startRelay(t, cfg)
	const old = 5
	for i := 0; i < old; i++ {
		if _, err := submit(first.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "the destination down", func() bool { return strings.Contains(first.logs.String(), "destination down") })
	first.stop()

	// The recovery of the second relay is held after its first message.
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	var n int
	loadHook = func(string) {
		if n++; n == 2 {
			<-hold
		}
	}
	t.Cleanup(func() { loadHook = nil })
	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	second := startRelay(t, cfg)

	c, err := net.DialTimeout("tcp", second.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	greeting, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || !strings.HasPrefix(greeting, "220") {
		t.Fatalf("no prompt greeting while the queue is recovered: %q, %v", greeting, err)
	}
	status, body := readyz(t, second)
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "recovering the queue") {
		t.Errorf("/readyz during recovery: %d %q, want 503 saying it is recovering", status, body)
	}
	if _, err := submit(second.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatalf("submit during recovery: %v", err)
	}

	release()
	if !up.Wait(old+1, 10*time.Second) {
		t.Fatalf("%d of %d messages delivered after the recovery", up.Count(), old+1)
	}
	eventually(t, 5*time.Second, "ready", func() bool { s, _ := readyz(t, second); return s == http.StatusOK })
	if !strings.Contains(second.logs.String(), "recovered queued messages") {
		t.Error("the log does not say when the recovery was complete")
	}
	time.Sleep(300 * time.Millisecond)
	if got := len(up.Messages()); got != old+1 {
		t.Errorf("the upstream got %d messages, want each of %d exactly once", got, old+1)
	}
	eventually(t, 5*time.Second, "the queue empty", func() bool { return second.QueueSize() == 0 })
}

func readyz(t *testing.T, tr *testRelay) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + tr.MetricsAddr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
