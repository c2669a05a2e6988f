package tlsrpt

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tlsrelay/policy"
)

// TestDailyReportWithBothResults: a day with successes and failures under
// two policies gives one RFC 8460 report for the domain, kept across a
// restart (a new Store), and the next day starts a new one.
func TestDailyReportWithBothResults(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: dir, Org: "relay.example.test"}
	at := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	sts := PolicyDesc{Type: STS, String: []string{"version: STSv1", "mode: enforce", "mx: mx.rpt.test", "max_age: 86400"}, MXHost: []string{"mx.rpt.test"}}
	rec := func(s *Store, ss Session) {
		t.Helper()
		if err := s.Record(ss); err != nil {
			t.Fatal(err)
		}
	}
	rec(s, Session{Time: at, Domain: "rpt.test", Policy: sts, ReceivingMX: "mx.rpt.test"})
	rec(s, Session{Time: at, Domain: "rpt.test", Policy: sts, ReceivingMX: "mx.rpt.test"})
	rec(s, Session{Time: at, Domain: "rpt.test", Policy: sts, Result: policy.ResultCertExpired, ReceivingMX: "mx.rpt.test", ReceivingIP: "127.0.0.1", Reason: "expired"})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := &Store{Dir: dir, Org: "relay.example.test"}
	rec(s2, Session{Time: at.Add(time.Hour), Domain: "rpt.test", Policy: sts, Result: policy.ResultCertExpired, ReceivingMX: "mx.rpt.test", ReceivingIP: "127.0.0.1", Reason: "expired"})
	rec(s2, Session{Time: at.Add(time.Hour), Domain: "rpt.test", Policy: PolicyDesc{Type: TLSA, String: []string{"3 1 1 ab"}}, Result: policy.ResultValidationFailure, ReceivingMX: "mx2.rpt.test", Reason: "dane_mismatch"})
	rec(s2, Session{Time: at.Add(24 * time.Hour), Domain: "rpt.test", Policy: sts})
	if err := s2.Flush(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(dir + "/2026-11-29/rpt.test.json")
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	dr := r["date-range"].(map[string]any)
	if dr["start-datetime"] != "2026-11-29T00:00:00Z" || dr["end-datetime"] != "2026-11-29T23:59:59Z" || r["organization-name"] != "relay.example.test" {
		t.Errorf("header: %s", raw)
	}
	pols := r["policies"].([]any)
	if len(pols) != 2 {
		t.Fatalf("%d policies: %s", len(pols), raw)
	}
	p0 := pols[0].(map[string]any)
	sum := p0["summary"].(map[string]any)
	if p0["policy"].(map[string]any)["policy-type"] != "sts" || p0["policy"].(map[string]any)["policy-domain"] != "rpt.test" ||
		sum["total-successful-session-count"] != 2.0 || sum["total-failure-session-count"] != 2.0 {
		t.Errorf("sts policy: %v", p0)
	}
	fd := p0["failure-details"].([]any)
	if len(fd) != 1 || fd[0].(map[string]any)["result-type"] != "certificate-expired" || fd[0].(map[string]any)["failed-session-count"] != 2.0 ||
		fd[0].(map[string]any)["receiving-mx-hostname"] != "mx.rpt.test" {
		t.Errorf("failure details: %v", fd)
	}
	if pols[1].(map[string]any)["policy"].(map[string]any)["policy-type"] != "tlsa" {
		t.Errorf("tlsa policy: %v", pols[1])
	}
	list, err := List(dir)
	if err != nil || len(list) != 2 || list[0].Day != "2026-11-29" || list[0].Successful != 2 || list[0].Failed != 3 || list[1].Day != "2026-11-30" || list[1].Successful != 1 {
		t.Errorf("List: %+v, %v", list, err)
	}
}

// countingStore is a Store whose writes are counted.
func countingStore(t *testing.T, interval time.Duration) (*Store, *atomic.Int64) {
	t.Helper()
	var writes atomic.Int64
	s := &Store{Dir: t.TempDir(), Org: "relay.example.test", Interval: interval}
	s.writeFile = func(path string, data []byte) error {
		writes.Add(1)
		return os.WriteFile(path, data, 0o600)
	}
	t.Cleanup(func() { s.Close() })
	return s, &writes
}

func successes(t *testing.T, path string) int64 {
	t.Helper()
	r, err := readReport(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, p := range r.Policies {
		n += p.Summary.Successful
	}
	return n
}

// TestRecordCountsInMemory: many sessions counted at once (as the MX
// delivery workers do) are not each written: nothing is written until
// the interval passes or Flush, and then the report holds every session.
func TestRecordCountsInMemory(t *testing.T) {
	s, writes := countingStore(t, time.Hour)
	at := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				dom := fmt.Sprintf("d%d.test", i%3)
				if err := s.Record(Session{Time: at, Domain: dom, Policy: PolicyDesc{Type: NoPolicyFound}, ReceivingMX: "mx." + dom}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if n := writes.Load(); n != 0 {
		t.Fatalf("400 sessions made %d writes before the interval, want none", n)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load(); n != 3 {
		t.Errorf("Flush made %d writes, want one per report (3)", n)
	}
	var total int64
	for i := 0; i < 3; i++ {
		total += successes(t, filepath.Join(s.Dir, "2026-11-29", fmt.Sprintf("d%d.test.json", i)))
	}
	if total != 400 {
		t.Errorf("the reports count %d sessions, want 400", total)
	}
	// Nothing changed: a second Flush writes nothing.
	if err := s.Flush(); err != nil || writes.Load() != 3 {
		t.Errorf("a Flush with nothing new wrote (%d writes, %v)", writes.Load(), err)
	}
}

// TestRecordWritesOnTheTimerAtRolloverAndClose: the changed reports are
// written once the interval passes, the last day's at once when a session
// of the next day is counted, and the rest by Close; a session after
// Close is written at once.
func TestRecordWritesOnTheTimerAtRolloverAndClose(t *testing.T) {
	s, writes := countingStore(t, 20*time.Millisecond)
	at := time.Date(2026, 11, 29, 23, 59, 0, 0, time.UTC)
	path := filepath.Join(s.Dir, "2026-11-29", "rpt.test.json")
	s.Record(Session{Time: at, Domain: "rpt.test", Policy: PolicyDesc{Type: NoPolicyFound}})
	waitFor(t, "the timed write", func() bool { return writes.Load() == 1 })
	if successes(t, path) != 1 {
		t.Error("the timed write lacks the session")
	}

	s.Interval = time.Hour // from now on only the rollover and Close write
	s.Record(Session{Time: at, Domain: "rpt.test", Policy: PolicyDesc{Type: NoPolicyFound}})
	s.Record(Session{Time: at.Add(2 * time.Minute), Domain: "rpt.test", Policy: PolicyDesc{Type: NoPolicyFound}})
	// The rollover writes both days' reports and forgets the last day's.
	waitFor(t, "the write at the rollover", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.reports) == 1
	})
	if successes(t, path) != 2 {
		t.Error("the last day's report is not complete after the rollover")
	}
	next := filepath.Join(s.Dir, "2026-11-30", "rpt.test.json")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if successes(t, next) != 1 {
		t.Error("Close did not write the new day's report")
	}
	s.Record(Session{Time: at.Add(3 * time.Minute), Domain: "rpt.test", Policy: PolicyDesc{Type: NoPolicyFound}})
	if successes(t, next) != 2 {
		t.Error("a session after Close is not written")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
