package spool

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCommitOpenRemove(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	env := Envelope{From: "a@b.test", Recipients: []string{"c@d.test", "e@f.test"}, Received: time.Now().UTC()}
	p, err := s.Create(env)
	if err != nil {
		t.Fatal(err)
	}
	body := "Subject: x\r\n\r\nbody\r\n"
	io.WriteString(p, body)
	if ids, _ := s.List(); len(ids) != 0 {
		t.Fatalf("uncommitted message listed: %v", ids)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	m, err := s.Open(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(m.Body())
	again, _ := io.ReadAll(m.Body())
	if m.Size != int64(len(body)) {
		t.Errorf("size %d, want %d", m.Size, len(body))
	}
	m.Close()
	if string(got) != body || string(again) != body {
		t.Fatalf("body %q then %q, want %q twice", got, again, body)
	}
	if m.From != env.From || len(m.Recipients) != 2 {
		t.Fatalf("envelope %+v", m.Envelope)
	}
	fi, err := os.Stat(filepath.Join(s.Dir(), "msg", p.ID()))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("spool file mode %v, err %v; want 0600", fi.Mode().Perm(), err)
	}

	st := NewState(m.Envelope)
	st.Recipients[0].Status = StatusDelivered
	if err := s.SaveState(p.ID(), st); err != nil {
		t.Fatal(err)
	}
	loaded, err := s.LoadState(m.Envelope)
	if err != nil || loaded.Recipients[0].Status != StatusDelivered || loaded.Recipients[1].Status != StatusPending {
		t.Fatalf("state round trip: %+v, %v", loaded, err)
	}
	// The store remembers which messages have a state file; a store
	// opened afresh (a restart) must find it on disk.
	reopened, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if loaded, err := reopened.LoadState(m.Envelope); err != nil || loaded.Recipients[0].Status != StatusDelivered {
		t.Fatalf("state after reopening: %+v, %v", loaded, err)
	}
	if err := s.Remove(p.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "state", p.ID())); !os.IsNotExist(err) {
		t.Fatalf("state file left behind after Remove: %v", err)
	}
	if ids, _ := s.List(); len(ids) != 0 {
		t.Fatalf("removed message still listed: %v", ids)
	}
}

func TestRecoverDropsUnacknowledgedAndOrphans(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	kept, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
	io.WriteString(kept, "x")
	kept.Commit()
	half, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}}) // crash before commit
	io.WriteString(half, "partial")
	os.WriteFile(filepath.Join(dir, "state", "1orphan"), []byte("{}"), 0o600)

	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := s2.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != kept.ID() {
		t.Fatalf("recovered %v, want only %s", ids, kept.ID())
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ not emptied: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "1orphan")); !os.IsNotExist(err) {
		t.Error("orphan state file kept")
	}
}

func TestRefusesWorldWritableSpool(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("got %v, want a refusal that says how to fix it", err)
	}
}

func TestInvalidIDsNeverBecomePaths(t *testing.T) {
	s, _ := Open(t.TempDir())
	for _, id := range []string{"", "../../etc/passwd", "a/b", "A", strings.Repeat("a", 65)} {
		if _, err := s.Open(id); err == nil {
			t.Errorf("Open(%q) succeeded", id)
		}
		if err := s.Remove(id); err == nil {
			t.Errorf("Remove(%q) succeeded", id)
		}
	}
}

// TestGroupCommitCoversEveryCaller commits from many goroutines at once;
// each must return only after a directory sync that began after its own
// rename, which the syncer's generation counter guarantees.
func TestGroupCommitCoversEveryCaller(t *testing.T) {
	s, _ := Open(t.TempDir())
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := s.Create(Envelope{Recipients: []string{"a@b.test"}})
			if err != nil {
				errs <- err
				return
			}
			io.WriteString(p, "x")
			errs <- p.Commit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if ids, _ := s.List(); len(ids) != 64 {
		t.Fatalf("%d messages committed, want 64", len(ids))
	}
	if s.msgSync.done > 64 || s.msgSync.done == 0 {
		t.Fatalf("%d directory syncs for 64 commits", s.msgSync.done)
	}
	t.Logf("64 concurrent commits shared %d directory syncs", s.msgSync.done)
}

func FuzzDecode(f *testing.F) {
	dir := f.TempDir()
	s, _ := Open(dir)
	p, _ := s.Create(Envelope{From: "a@b.test", Recipients: []string{"c@d.test"}, Received: time.Unix(0, 0).UTC()})
	io.WriteString(p, "Subject: x\r\n\r\nbody\r\n")
	p.SetPrepend("DKIM-Signature: v=1\r\n")
	p.Commit()
	good, _ := os.ReadFile(filepath.Join(dir, "msg", p.ID()))
	f.Add(good)
	f.Add([]byte(magic))
	f.Add([]byte("garbage"))
	f.Add(append([]byte(magic), "\n{\"id\":\"../x\",\"rcpt\":[\"c@d\"]}\n0000000000000020\n"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := Decode(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		if !validID(env.ID) || len(env.Recipients) == 0 || env.Size < 0 || env.Size > int64(len(data)) {
			t.Fatalf("accepted a bad file: %+v", env)
		}
	})
}

func TestPrependIsSentBeforeTheBody(t *testing.T) {
	s, _ := Open(t.TempDir())
	p, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
	io.WriteString(p, "Subject: x\r\n\r\nbody\r\n")
	p.SetPrepend("DKIM-Signature: test\r\n")
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	m, err := s.Open(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	got, _ := io.ReadAll(m.Body())
	if string(got) != "DKIM-Signature: test\r\nSubject: x\r\n\r\nbody\r\n" {
		t.Fatalf("got %q", got)
	}
}

// TestNamedTmpFallback runs the commit path used where O_TMPFILE is not
// available: a named file in tmp/, renamed into msg/.
func TestNamedTmpFallback(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	s.noTmpfile.Store(true)
	p, err := s.Create(Envelope{Recipients: []string{"a@b.test"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(p, "body\r\n")
	if _, err := os.Stat(filepath.Join(dir, "tmp", p.ID())); err != nil {
		t.Fatalf("no named tmp file: %v", err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	aborted, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
	aborted.Abort()
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ not clean: %v", entries)
	}
	m, err := s.Open(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if b, _ := io.ReadAll(m.Body()); string(b) != "body\r\n" {
		t.Errorf("body %q", b)
	}
}
