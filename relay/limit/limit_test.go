package limit

import (
	"context"
	"testing"
	"time"
)

// TestWaitingCountsEveryWaiter: Waiting counts reject-mode clients in
// Acquire and queued messages told to wait for the rate, until they come
// back or are long overdue.
func TestWaitingCountsEveryWaiter(t *testing.T) {
	g := New(0, 1)
	now := time.Now()
	if _, over := g.TryAcquire(now); over != nil {
		t.Fatal(over)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 2)
	done := make(chan *OverError)
	go func() {
		_, over := g.Acquire(ctx, 10*time.Second, time.Now, func() { started <- struct{}{} })
		done <- over
	}()
	<-started
	if n := g.Waiting(); n != 1 {
		t.Errorf("a client waiting in Acquire: Waiting = %d, want 1", n)
	}
	cancel()
	if over := <-done; over == nil || over.Limit != "max_messages_per_minute" {
		t.Fatalf("Acquire after cancel: %v", over)
	}
	<-started
	if n := g.Waiting(); n != 0 {
		t.Errorf("after Acquire returned: Waiting = %d, want 0", n)
	}

	g.WaitsForRate("a", now, now.Add(time.Minute))
	g.WaitsForRate("b", now, now.Add(time.Minute))
	if n := g.Waiting(); n != 2 {
		t.Errorf("two messages waiting for the rate: Waiting = %d, want 2", n)
	}
	g.Back("a", now.Add(time.Minute))
	if n := g.Waiting(); n != 1 {
		t.Errorf("one came back: Waiting = %d, want 1", n)
	}
	g.Back("c", now.Add(time.Minute+rateGrace+g.interval+time.Second))
	if n := g.Waiting(); n != 0 {
		t.Errorf("one never came back: Waiting = %d after its grace, want 0", n)
	}
}
