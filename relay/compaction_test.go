package relay

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tlsrelay/relay/sink"
)

// compactQuickly runs the journal's compaction every d for the rest of
// the test.
func compactQuickly(t *testing.T, d time.Duration) {
	old := compactEvery
	compactEvery = d
	t.Cleanup(func() { compactEvery = old })
}

// journalSegments lists the spool's journal segment files.
func journalSegments(t *testing.T, spoolDir string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(spoolDir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// compactedMessages reads tlsrelay_journal_compacted_messages_total as a
// scrape would.
func compactedMessages(t *testing.T, tr *testRelay) float64 {
	t.Helper()
	mfs, err := tr.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "tlsrelay_journal_compacted_messages_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("tlsrelay_journal_compacted_messages_total is not exported")
	return 0
}

// compactionBody is message i's body: about 2 KiB, unique.
func compactionBody(i int) string {
	return fmt.Sprintf("From: app@sender.test\r\nSubject: message %d\r\n\r\n%s\r\n", i, strings.Repeat(fmt.Sprintf("line %d\r\n", i), 200))
}

// TestCompactionFreesSegmentsPinnedByADownDestination: one destination of
// two is down, and gets one message in ten, which waits parked with its
// cohort, never attempted. The journal segments those few messages pin
// are compacted and deleted while the healthy destination's mail flows;
// after a restart, with the destination back, every waiting message is
// delivered intact and exactly once, and nothing of the rest twice.
func TestCompactionFreesSegmentsPinnedByADownDestination(t *testing.T) {
	compactQuickly(t, 100*time.Millisecond)
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.up.test").TLSCertificate()})
	downAddr := freePort(t)
	spoolDir := t.TempDir()
	cfg := slowRetries(spoolDir) + destination("up.test", up.Addr(), p.caFile, "mx.up.test") +
		destination("down.test", downAddr, p.caFile, "mx.down.test")

	first := startRelay(t, cfg)
	first.store.SetSegmentSize(64 << 10) // about 28 of these messages a segment
	const n = 100
	want := map[string]bool{} // what the down destination must get
	for i := 0; i < n; i++ {
		to := "rcpt@up.test"
		if i%10 == 0 {
			to = "rcpt@down.test"
			want[compactionBody(i)] = true
		}
		if _, err := submit(first.Addr().String(), "app@sender.test", []string{to}, compactionBody(i)); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	if !up.Wait(n-len(want), 20*time.Second) {
		t.Fatalf("the healthy destination got %d of %d", up.Count(), n-len(want))
	}
	if !strings.Contains(first.logs.String(), "destination down") {
		t.Fatal("the down destination was not suspended: its mail did not wait as a cohort")
	}
	// Segments are numbered from 0: the newest's number says how many
	// were written.
	segs := journalSegments(t, spoolDir)
	open := segs[len(segs)-1]
	if open < "0000000000000003.seg" {
		t.Fatalf("segments %v after %d messages; the test wants several", segs, n)
	}
	// Every segment but the open one goes, although each held waiting
	// messages.
	eventually(t, 10*time.Second, "the segments pinned by parked mail deleted", func() bool {
		now := journalSegments(t, spoolDir)
		return len(now) > 0 && now[0] >= open
	})
	if got := first.QueueSize(); got != len(want) {
		t.Errorf("%d messages queued, want the %d for the down destination", got, len(want))
	}
	moved := compactedMessages(t, first)
	if lines := strings.Count(first.logs.String(), "journal segment compacted"); lines < 3 || moved < 3 {
		t.Errorf("%d compaction log lines and %v messages moved for the segments before %s", lines, moved, open)
	}
	first.stop()

	down := startSink(t, sink.Options{Addr: downAddr, Cert: p.leaf(t, "mx.down.test").TLSCertificate()})
	second := startRelay(t, cfg)
	if !down.Wait(len(want), 20*time.Second) {
		t.Fatalf("after the restart the destination that came back got %d of %d", down.Count(), len(want))
	}
	eventually(t, 10*time.Second, "the queue empty", func() bool { return second.QueueSize() == 0 })
	time.Sleep(200 * time.Millisecond) // room for a duplicate to show
	got := map[string]int{}
	for _, m := range down.Messages() {
		got[string(m.Data)]++
	}
	for body, k := range got {
		if !want[body] || k != 1 {
			t.Errorf("the down destination got a message %d times (expected: %v): %.40q", k, want[body], body)
		}
	}
	if len(got) != len(want) || up.Count() != n-len(want) {
		t.Errorf("delivered %d distinct of %d to the destination that came back, %d of %d to the healthy one",
			len(got), len(want), up.Count(), n-len(want))
	}
}

// TestFullOutageIsNotCompacted: when every message waits, every segment
// is dense, and compaction must not turn the backlog into a file per
// message.
func TestFullOutageIsNotCompacted(t *testing.T) {
	compactQuickly(t, time.Hour) // the test runs the passes itself
	p := newPKI(t, "Test CA")
	spoolDir := t.TempDir()
	tr := startRelay(t, slowRetries(spoolDir)+destination("down.test", freePort(t), p.caFile, "mx.down.test"))
	tr.store.SetSegmentSize(64 << 10)
	const n = 90
	for i := 0; i < n; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@down.test"}, compactionBody(i)); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "the destination down", func() bool {
		return strings.Contains(tr.logs.String(), "destination down")
	})
	segs := journalSegments(t, spoolDir)
	if len(segs) < 3 {
		t.Fatalf("%d journal segments after %d messages; the test wants several", len(segs), n)
	}
	for i := 0; i < 3; i++ {
		tr.queue.compactJournal()
	}
	if now := journalSegments(t, spoolDir); !slices.Equal(now, segs) {
		t.Errorf("segments %v became %v in a full outage", segs, now)
	}
	files, _ := os.ReadDir(filepath.Join(spoolDir, "msg"))
	if len(files) > 1 || compactedMessages(t, tr) != 0 ||
		strings.Contains(tr.logs.String(), "journal segment compacted") {
		t.Errorf("a full outage was compacted: %d files in msg/ (at most the first attempt's)", len(files))
	}
	if got := tr.QueueSize(); got != n {
		t.Errorf("%d queued, want %d", got, n)
	}
}

// TestCompactionClaimKeepsDeliveriesOff: compaction may take a parked
// message (idle) but not one a delivery or an operator has; while it has
// it, no worker touches it, and the probe that comes due meanwhile waits
// for it instead of being lost: at release the message goes, finds the
// destination back, and the mail that waited goes with it.
func TestCompactionClaimKeepsDeliveriesOff(t *testing.T) {
	quickProbes(t, time.Second)
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	tr := startRelay(t, slowRetries(t.TempDir())+destination("example.test", addr, p.caFile, "mx.example.test"))
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the destination down", func() bool {
		return strings.Contains(tr.logs.String(), "destination down")
	})
	reply, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody)
	if err != nil {
		t.Fatal(err)
	}
	id := reply[strings.LastIndexByte(reply, ' ')+1:]
	item := func() item {
		tr.queue.mu.Lock()
		defer tr.queue.mu.Unlock()
		return *tr.queue.items[id]
	}
	eventually(t, 5*time.Second, "the second message parked", func() bool { return item().parked != "" })

	// An operator's lease excludes compaction.
	tr.queue.lease(id, func() error {
		if release, ok := tr.queue.claimIdle(id); ok {
			release()
			t.Error("compaction claimed a message an operator holds")
		}
		return nil
	})
	// The lease took it out of its cohort; it goes back, as its next run would put it.
	if !tr.queue.park(id, tr.Config().Table.Choose(senderOf("app@sender.test"), "example.test"), time.Now().Add(time.Hour)) {
		t.Fatal("the destination is no longer down")
	}

	release, ok := tr.queue.claimIdle(id)
	if !ok {
		t.Fatal("compaction could not claim an idle parked message")
	}
	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	eventually(t, 5*time.Second, "the probe due while the message is claimed", func() bool { return item().again })
	time.Sleep(100 * time.Millisecond)
	if up.Count() != 0 {
		t.Fatal("a claimed message was delivered")
	}
	release()
	if !up.Wait(2, 5*time.Second) {
		t.Fatalf("after the claim ended %d of 2 messages went", up.Count())
	}
}
