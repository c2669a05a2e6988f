package relay

import (
	"strings"
	"testing"
	"time"
)

// TestRunningRelayStreamsItsQueue: `queue list` against a running relay is
// served by the relay over its control socket, one message per line, and
// says which messages wait for a down destination without being tried.
func TestRunningRelayStreamsItsQueue(t *testing.T) {
	quickProbes(t, time.Hour)
	p := newPKI(t, "Test CA")
	tr := startRelay(t, slowRetries(t.TempDir())+destination("example.test", freePort(t), p.caFile, "mx.example.test"))
	const n = 4
	for i := 0; i < n; i++ {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	eventually(t, 10*time.Second, "the destination down, its mail parked", func() bool {
		return strings.Contains(tr.logs.String(), "destination down") && tr.QueueSize() == n && tr.queue.nwaiting.Load() == n
	})
	var entries []QueueEntry
	if err := StreamQueue(tr.store.Dir(), func(e QueueEntry) error { entries = append(entries, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(entries) != n {
		t.Fatalf("the relay listed %d messages, want %d", len(entries), n)
	}
	waiting := 0
	for i, e := range entries {
		if i > 0 && e.ID < entries[i-1].ID {
			t.Errorf("listing not oldest first: %s after %s", e.ID, entries[i-1].ID)
		}
		if e.WaitingFor == "example.test" {
			waiting++
		}
		if e.Delivered == nil || e.Failed == nil || len(e.Pending) != 1 || len(e.Recipients) != 1 {
			t.Errorf("entry %+v: lists lost on the way (the JSON listing shows empty ones as [])", e)
		}
	}
	if waiting != n-1 {
		t.Errorf("%d messages listed as waiting for the down destination, want the %d that were not tried", waiting, n-1)
	}
}
