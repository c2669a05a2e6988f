package spool

import (
	"testing"
)

// BenchmarkCommit is the durable write behind every 250: create, write
// 1 KiB, fsync the file, rename, fsync the directory (shared between
// concurrent commits). It measures this machine's disk as much as the code.
func BenchmarkCommit(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	b.SetBytes(int64(len(body)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := s.Create(Envelope{Recipients: []string{"a@b.test"}})
			if err != nil {
				b.Fatal(err)
			}
			p.Write(body)
			if err := p.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
