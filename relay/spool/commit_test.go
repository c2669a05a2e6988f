package spool

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestCloseFailureAfterTheLinkStillCommits: once a message's file is
// synced, linked into msg/ and msg/ synced, it is committed, and Commit
// must say so even if closing the file then fails: a 451 for a message the
// spool keeps would have the client send it again, delivered twice. The
// failure is logged.
func TestCloseFailureAfterTheLinkStillCommits(t *testing.T) {
	for _, named := range []bool{false, true} {
		dir := t.TempDir()
		s := openRecovered(t, dir)
		s.noTmpfile.Store(named)
		var logs bytes.Buffer
		s.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
		p, err := s.Create(Envelope{From: "a@b.test", Recipients: []string{"c@d.test"}})
		if err != nil {
			t.Fatal(err)
		}
		p.Write([]byte(strings.Repeat("x", journalMaxMessage+1))) // a file of its own

		saved := closeFile
		closeFile = func(f *os.File) error { f.Close(); return syscall.EIO }
		err = p.Commit()
		closeFile = saved
		if err != nil {
			t.Fatalf("named tmp file %v: Commit reported %v for a message the spool keeps", named, err)
		}
		if !strings.Contains(logs.String(), "input/output error") || !strings.Contains(logs.String(), p.ID()) {
			t.Errorf("the close error was not logged: %q", logs.String())
		}
		if ids, _ := openRecovered(t, dir).List(); !slices.Equal(ids, []string{p.ID()}) {
			t.Fatalf("after a restart: %v", ids)
		}
	}
}

// TestFailureBeforeTheLinkLeavesNothing: a commit that fails before the
// message is linked into msg/ reports the failure and leaves nothing for a
// restart to find.
func TestFailureBeforeTheLinkLeavesNothing(t *testing.T) {
	for _, named := range []bool{false, true} {
		dir := t.TempDir()
		s := openRecovered(t, dir)
		s.noTmpfile.Store(named)
		p, _ := s.Create(Envelope{ID: "1fail", From: "a@b.test", Recipients: []string{"c@d.test"}})
		p.Write([]byte(strings.Repeat("x", journalMaxMessage+1)))
		os.Mkdir(filepath.Join(dir, "msg", "1fail"), 0o700) // the link or rename fails
		if err := p.Commit(); err == nil {
			t.Fatal("Commit succeeded although the message could not be linked in")
		}
		os.Remove(filepath.Join(dir, "msg", "1fail"))
		if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
			t.Errorf("tmp/ after a failed commit: %v", entries)
		}
		if ids, _ := openRecovered(t, dir).List(); len(ids) != 0 {
			t.Fatalf("after a failed commit a restart finds %v", ids)
		}
	}
}
