package upstream

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"tlsrelay/policy"
)

// TestSendLargeBody: a body of several spool reads arrives whole, in
// order, whether the spool's reader returns full reads or short ones.
func TestSendLargeBody(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING")
	c := dial(t, dest)
	defer c.Close()
	var b strings.Builder
	for i := 0; b.Len() < 3*bodyRead+17; i++ {
		b.WriteString(strings.Repeat(string(rune('a'+i%26)), 77) + "\r\n")
	}
	msg := b.String()
	bodies := []Body{body(msg), {Size: int64(len(msg)), Open: func() io.Reader { return iotest.HalfReader(strings.NewReader(msg)) }}}
	for i, bd := range bodies {
		if _, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, bd, false); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	got := up.delivered()
	if len(got) != len(bodies) {
		t.Fatalf("delivered %d messages, want %d", len(got), len(bodies))
	}
	for i, g := range got {
		if g != msg {
			t.Errorf("message %d: delivered %d bytes, not the %d sent", i, len(g), len(msg))
		}
	}
}

// TestSendShortLargeBodyIsNeverDelivered: a large body that the spool
// cuts short fails the message and drops the connection, although its
// TLS records were being gathered into large writes.
func TestSendShortLargeBodyIsNeverDelivered(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING")
	c := dial(t, dest)
	msg := strings.Repeat(strings.Repeat("s", 78)+"\r\n", 5000)
	short := Body{Size: int64(len(msg)) + 100, Open: func() io.Reader { return strings.NewReader(msg) }}
	_, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, short, false)
	var f *policy.Failure
	if !errors.As(err, &f) || !strings.Contains(f.Detail, "spooled message could not be read back") {
		t.Fatalf("error %v", err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		up.mu.Lock()
		h := up.hangups
		up.mu.Unlock()
		if h > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the connection was not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := up.delivered(); len(got) != 0 {
		t.Fatalf("a short body was delivered: %d messages", len(got))
	}
}
