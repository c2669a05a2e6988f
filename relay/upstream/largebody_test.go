package upstream

import (
	"context"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// TestSendLargeBody: a body of several spool reads arrives whole, in
// order, whether the spool's reader returns full reads or short ones,
// with BDAT and, to a server without CHUNKING, dot-stuffed after DATA
// (lines that begin with a dot fall at every place in the reads).
func TestSendLargeBody(t *testing.T) {
	for _, ext := range [][]string{{"PIPELINING", "CHUNKING"}, {"PIPELINING"}} {
		t.Run(strings.Join(ext, "+"), func(t *testing.T) { testSendLargeBody(t, ext) })
	}
}

func testSendLargeBody(t *testing.T, ext []string) {
	up, dest := startScripted(t, ext...)
	c := dial(t, dest)
	defer c.Close()
	var b strings.Builder
	for i := 0; b.Len() < 3*bodyRead+17; i++ {
		if i%7 == 0 {
			b.WriteString("." + strings.Repeat(".", i%3) + "\r\n")
			continue
		}
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
