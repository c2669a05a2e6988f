package spool

import (
	"encoding/json"
	"testing"
	"time"
)

// BenchmarkCommit is a message committed to a file of its own, the path of
// messages over 64 KiB (and of every message before the spool is
// recovered): create, write 1 KiB, fsync the file, link it in, fsync the
// directory (shared between concurrent commits). It measures this
// machine's disk as much as the code.
func BenchmarkCommit(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	b.SetBytes(int64(len(body)))
	commitInParallel(b, s, body)
}

// BenchmarkJournalCommit is the same 1 KiB commit through the journal,
// the path every small message takes once the spool is recovered: 16
// committers at once, as with 16 sessions, share each fdatasync. It
// reports how many messages each fdatasync made durable.
func BenchmarkJournalCommit(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Recover(); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	b.SetBytes(int64(len(body)))
	b.SetParallelism(8)
	commitInParallel(b, s, body)
	b.StopTimer()
	s.j.mu.Lock()
	syncs := s.j.syncs
	s.j.mu.Unlock()
	if syncs > 0 {
		b.ReportMetric(float64(b.N)/float64(syncs), "msgs/sync")
	}
}

// commitInParallel commits b.N messages of body from parallel goroutines.
func commitInParallel(b *testing.B, s *Store, body []byte) {
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

// BenchmarkEnvelopeJSON compares the envelope encoder with encoding/json,
// which it replaces on the commit path.
func BenchmarkEnvelopeJSON(b *testing.B) {
	env := Envelope{ID: "1a202ab1f68g475so2c5drsvmdz", From: "app@sender.test", Recipients: []string{"a@example.test", "b@example.test"},
		Received: time.Now().UTC(), Client: "127.0.0.1:41264", Helo: "legacy.app", Size: 1024}
	b.Run("appendJSON", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf, _ = env.appendJSON(buf[:0])
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			json.Marshal(env)
		}
	})
}
