package relay

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

// submitMany sends n messages over sessions parallel clients at once.
func submitMany(t *testing.T, addr string, sessions, n int, to []string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for s := 0; s < sessions; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			for i := s; i < n; i += sessions {
				if _, err := submit(addr, "app@sender.test", to, testBody); err != nil {
					errs <- err
				}
			}
		}(s)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestMaxConnections: with max_connections = 2 the upstream, which
// records how many connections it had open at once, never sees more than
// 2, and every message arrives; the client never sees the limit.
func TestMaxConnections(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		OnMessage: func(sink.Message) { time.Sleep(30 * time.Millisecond) }}) // a slow upstream: deliveries overlap
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test", "max_connections = 2"))
	submitMany(t, tr.Addr().String(), 6, 12, []string{"rcpt@example.test"})
	if !up.Wait(12, 20*time.Second) {
		t.Fatalf("upstream got %d of 12", up.Count())
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
	if peak := up.PeakSessions(); peak > 2 {
		t.Errorf("the upstream saw %d connections at once, want at most 2", peak)
	}
	if strings.Contains(tr.logs.String(), "message deferred") {
		t.Errorf("mail waiting for a connection was deferred as a failure:\n%s", tr.logs.String())
	}
}

// TestMaxMessagesPerMinute: with a rate of 600 a minute the upstream's
// arrival times respect it: transactions begin 100 ms apart, never as a
// burst.
func TestMaxMessagesPerMinute(t *testing.T) {
	p := newPKI(t, "Test CA")
	var mu sync.Mutex
	var arrivals []time.Time
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		OnMessage: func(sink.Message) { mu.Lock(); arrivals = append(arrivals, time.Now()); mu.Unlock() }})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test", "max_messages_per_minute = 600"))
	start := time.Now()
	submitMany(t, tr.Addr().String(), 5, 5, []string{"rcpt@example.test"})
	if !up.Wait(5, 20*time.Second) {
		t.Fatalf("upstream got %d of 5", up.Count())
	}
	mu.Lock()
	defer mu.Unlock()
	// The bucket spaces the starts of transactions by 100 ms, so the fifth
	// cannot begin, let alone arrive, before 400 ms have passed since the
	// first could (comparing arrivals with each other would measure the
	// transactions' own lengths as well).
	if last := arrivals[len(arrivals)-1].Sub(start); last < 400*time.Millisecond {
		t.Errorf("5 messages at 600 a minute all arrived within %v, want 400ms or more", last)
	}
	if strings.Contains(tr.logs.String(), "message deferred") {
		t.Errorf("mail waiting for the rate was deferred as a failure:\n%s", tr.logs.String())
	}
}

// TestMaxRecipientsPerMessage: 250 recipients with
// max_recipients_per_message = 100 arrive as 3 transactions, each
// recipient exactly once; one the upstream refuses is recorded alone.
func TestMaxRecipientsPerMessage(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		Refuse: func(rcpt string) *smtp.SMTPError {
			if rcpt == "r7@example.test" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}})
	cfg := strings.Replace(baseConfig(t.TempDir()), "max_recipients = 5", "max_recipients = 300", 1)
	tr := startRelay(t, cfg+destination("example.test", up.Addr(), p.caFile, "mx.example.test", "max_recipients_per_message = 100"))
	var to []string
	for i := 0; i < 250; i++ {
		to = append(to, fmt.Sprintf("r%d@example.test", i))
	}
	if _, err := submit(tr.Addr().String(), "app@sender.test", to, testBody); err != nil {
		t.Fatal(err)
	}
	if !up.Wait(3, 10*time.Second) {
		t.Fatalf("upstream got %d transactions, want 3", up.Count())
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
	var got []string
	var sizes []int
	for _, m := range up.Messages() {
		got = append(got, m.To...)
		sizes = append(sizes, len(m.To))
	}
	if up.Count() != 3 || !slices.Equal(sizes, []int{100, 99, 50}) && !slices.Equal(sizes, []int{99, 100, 50}) {
		t.Errorf("transactions of %v recipients, want 3 of at most 100", sizes)
	}
	slices.Sort(got)
	want := slices.DeleteFunc(slices.Clone(to), func(s string) bool { return s == "r7@example.test" })
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the upstream got %d recipients (each once: %v), want the 249 it accepts", len(got), len(slices.Compact(slices.Clone(got))) == len(got))
	}
	if !strings.Contains(tr.logs.String(), "rcpt=r7@example.test") {
		t.Error("the refused recipient was not recorded on its own")
	}
}

// gaugeOf reads the value of a metric with the given destination label
// from the relay's registry, as a scrape would.
func gaugeOf(t *testing.T, tr *testRelay, name, dest string) float64 {
	t.Helper()
	mfs, err := tr.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "destination" && l.GetValue() == dest {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestLimitWaitingCountsRateWaiters: messages held back by
// max_messages_per_minute count in tlsrelay_destination_limit_waiting_messages,
// as those waiting for a connection do.
func TestLimitWaitingCountsRateWaiters(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("example.test", up.Addr(), p.caFile, "mx.example.test", "max_messages_per_minute = 2"))
	for i := 0; i < 3; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatal(err)
		}
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("the first message was not delivered")
	}
	eventually(t, 5*time.Second, "two messages counted as waiting for the rate", func() bool {
		return gaugeOf(t, tr, "tlsrelay_destination_limit_waiting_messages", "example.test") == 2
	})
	if n := up.Count(); n != 1 {
		t.Errorf("the upstream got %d messages within the first interval of the rate, want 1", n)
	}
}
