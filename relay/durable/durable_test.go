package durable

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestWriteFileReplacesWholly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	for _, content := range []string{"first\n", "second, longer than the first\n", "3\n"} {
		if err := WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("read back %q, %v; want %q", got, err, content)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("the directory holds %d entries, want only the file (no temporary left behind)", len(entries))
	}
}

func TestWriteFileFailureLeavesTheOldContent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	if err := WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory in the way of the rename makes the write fail.
	blocked := filepath.Join(dir, "blocked")
	if err := os.Mkdir(blocked, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(blocked, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(blocked, []byte("new"), 0o600); err == nil {
		t.Fatal("writing over a non-empty directory succeeded")
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("unrelated file changed: %q", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("the directory holds %d entries, want 2 (a temporary was left behind)", len(entries))
	}
}

// TestMkdirAllSyncsEveryNewDirectory: a directory created on first start is
// an entry in its parent, lost in a power cut unless the parent is synced
// after it was made. Every directory MkdirAll creates — missing parents
// too — is synced into its parent; an existing one costs no sync.
func TestMkdirAllSyncsEveryNewDirectory(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "var", "spool")
	var seen []string // "parent: entries at the time of its sync"
	saved := syncDir
	syncDir = func(d string) error {
		entries, _ := os.ReadDir(d)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		seen = append(seen, d+": "+strings.Join(names, " "))
		return saved(d)
	}
	defer func() { syncDir = saved }()
	if err := MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	synced := func(parent, child string) bool {
		for _, line := range seen {
			p, names, _ := strings.Cut(line, ": ")
			if p == parent && slices.Contains(strings.Fields(names), child) {
				return true
			}
		}
		return false
	}
	for _, c := range []struct{ parent, child string }{
		{base, "var"}, {filepath.Join(base, "var"), "spool"},
	} {
		if !synced(c.parent, c.child) {
			t.Errorf("%s was created but %s was not synced after it (syncs: %q)", c.child, c.parent, seen)
		}
	}
	// A second start creates nothing, and syncs nothing for it.
	seen = nil
	if err := MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 0 {
		t.Errorf("creating an existing directory synced %q", seen)
	}
}
