package spool

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestWritesOfEverySizeKeepTheirOrder: small writes go through the
// buffer, large ones straight to the file; the body read back, before
// and after the commit, is the bytes written, in order.
func TestWritesOfEverySizeKeepTheirOrder(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Create(Envelope{From: "a@b.test", Recipients: []string{"c@d.test"}, Received: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for i, n := range []int{10, 60 << 10, 100, directWrite, 3, directWrite - 1, 200 << 10, 1, 70 << 10, 5} {
		b := bytes.Repeat([]byte{byte('a' + i)}, n)
		want.Write(b)
		if k, err := p.Write(b); err != nil || k != n {
			t.Fatalf("write %d of %d bytes: %d, %v", i, n, k, err)
		}
	}
	r, err := p.Body()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(r); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("before the commit: read back %d bytes, not the %d written", len(got), want.Len())
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	m, err := s.Open(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, _ := io.ReadAll(m.Body()); !bytes.Equal(got, want.Bytes()) || m.Size != int64(want.Len()) {
		t.Fatalf("committed: read back %d bytes (size %d), not the %d written", len(got), m.Size, want.Len())
	}
}
