package spool

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// envelopeOfSize returns an envelope for a body of bodySize bytes whose
// encoding is exactly n bytes, with addresses that need escaping.
func envelopeOfSize(t *testing.T, n int, bodySize int64) Envelope {
	t.Helper()
	env := Envelope{
		ID:         NewID(),
		From:       `"a&b"@sender.test`,
		Recipients: []string{`"<x>"@d.test`, "@d.test"},
		Received:   time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		Client:     "127.0.0.1:1234",
		Helo:       "app.test",
		Size:       bodySize,
	}
	b, err := env.appendJSON(nil)
	if err != nil {
		t.Fatal(err)
	}
	env.Recipients[1] = strings.Repeat("r", n-len(b)) + env.Recipients[1]
	if b, _ := env.appendJSON(nil); len(b) != n {
		t.Fatalf("built an envelope of %d bytes, want %d", len(b), n)
	}
	return env
}

// TestEnvelopeAtTheLimitIsReadBack: an envelope of exactly
// MaxEnvelopeBytes is committed — to the journal with the largest body it
// takes, to a file of its own, and spilled from the journal to a file —
// and read back whole after a restart; one byte more is refused at commit
// with an *EnvelopeTooLargeError, and nothing of it is left in the spool.
func TestEnvelopeAtTheLimitIsReadBack(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	commit := func(env Envelope, body []byte) error {
		t.Helper()
		p, err := s.Create(env)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(body); err != nil {
			t.Fatal(err)
		}
		return p.Commit()
	}
	small := bytes.Repeat([]byte("j"), journalMaxMessage) // the most the journal takes
	large := bytes.Repeat([]byte("f"), journalMaxMessage+1)
	inJournal := envelopeOfSize(t, MaxEnvelopeBytes, int64(len(small)))
	inFile := envelopeOfSize(t, MaxEnvelopeBytes, int64(len(large)))
	spilled := envelopeOfSize(t, MaxEnvelopeBytes, int64(len(small)))
	for _, c := range []struct {
		env  Envelope
		body []byte
	}{{inJournal, small}, {inFile, large}, {spilled, small}} {
		if err := commit(c.env, c.body); err != nil {
			t.Fatalf("an envelope of exactly MaxEnvelopeBytes: %v", err)
		}
	}
	if !s.InJournal(inJournal.ID) || s.InJournal(inFile.ID) {
		t.Fatal("the messages did not take the paths this test is about")
	}
	if err := s.Spill(spilled.ID); err != nil {
		t.Fatalf("spilling an envelope at the limit: %v", err)
	}

	for _, c := range []struct {
		env  Envelope
		body []byte
	}{{envelopeOfSize(t, MaxEnvelopeBytes+1, int64(len(small))), small}, {envelopeOfSize(t, MaxEnvelopeBytes+1, int64(len(large))), large}} {
		err := commit(c.env, c.body)
		var tooLarge *EnvelopeTooLargeError
		if !errors.As(err, &tooLarge) || tooLarge.Size != MaxEnvelopeBytes+1 || tooLarge.ID != c.env.ID {
			t.Fatalf("an envelope one byte over the limit: %v, want an *EnvelopeTooLargeError", err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ after refused commits: %v", entries)
	}

	s2 := openRecovered(t, dir)
	ids, _ := s2.List()
	if len(ids) != 3 {
		t.Fatalf("after a restart: %d messages, want the 3 committed", len(ids))
	}
	if d := s2.Damaged(); len(d) != 0 {
		t.Fatalf("damage reported: %+v", d)
	}
	for _, c := range []struct {
		env  Envelope
		body []byte
	}{{inJournal, small}, {inFile, large}, {spilled, small}} {
		m, err := s2.Open(c.env.ID)
		if err != nil {
			t.Fatalf("reading back %s: %v", c.env.ID, err)
		}
		body, _ := io.ReadAll(m.Body())
		m.Close()
		if m.From != c.env.From || len(m.Recipients) != 2 || m.Recipients[0] != c.env.Recipients[0] ||
			m.Recipients[1] != c.env.Recipients[1] || !bytes.Equal(body, c.body) {
			t.Errorf("%s read back differs", c.env.ID)
		}
	}
}

// TestEncodedLen: what the relay counts per address at RCPT is what the
// envelope's encoding takes.
func TestEncodedLen(t *testing.T) {
	for _, addr := range []string{"a@b.test", `"<&>\"x"@b.test`, "ü@b.test", "\u2028@b"} {
		base := Envelope{ID: "1a", Recipients: []string{"x"}}
		with := Envelope{ID: "1a", Recipients: []string{"x", addr}}
		b1, _ := base.appendJSON(nil)
		b2, _ := with.appendJSON(nil)
		if got, want := EncodedLen(addr)+1, len(b2)-len(b1); got != want {
			t.Errorf("%q: EncodedLen+1 = %d, the envelope grew by %d", addr, got, want)
		}
	}
}
