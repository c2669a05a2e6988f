package drop

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

// frontDoor is a plain SMTP server standing for the relay's front door; it
// refuses recipients at refused.test for good.
func frontDoor(t *testing.T) *sink.Sink {
	t.Helper()
	s, err := sink.Start(sink.Options{NoTLS: true, Refuse: func(rcpt string) *smtp.SMTPError {
		if strings.HasSuffix(rcpt, "@refused.test") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newImporter(t *testing.T, addr string) *Importer {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "drop")
	if err := PrepareDir(dir); err != nil {
		t.Fatal(err)
	}
	return &Importer{Dir: dir, Addr: addr, Interval: time.Second, MaxAge: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func ls(t *testing.T, dir string) []string {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestPrepareDirCreatesASafeDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "drop")
	if err := PrepareDir(dir); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode()&(os.ModeSetgid|os.ModeSticky|os.ModePerm) != DirMode {
		t.Errorf("mode %v, want %v", fi.Mode(), DirMode)
	}
	for _, sub := range []string{importingDir, refusedDir} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v", sub, fi.Mode(), err)
		}
	}
}

func TestPrepareDirRefusesAnUnsafeDirectory(t *testing.T) {
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	link := filepath.Join(base, "link")
	os.Symlink(open, link)
	cases := map[string]string{open: "sticky", link: "symbolic link"}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		os.Mkdir(other, 0o700)
		os.Chown(other, 65534, 65534)
		cases[other] = "owned by uid 65534"
	}
	for dir, want := range cases {
		err := PrepareDir(dir)
		var de *DirError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a DirError saying %q", dir, err, want)
		}
	}
}

func TestImporterHandsOverAndRemoves(t *testing.T) {
	fd := frontDoor(t)
	im := newImporter(t, fd.Addr())
	if _, err := Write(im.Dir, Envelope{From: "app@x.test", Recipients: []string{"a@x.test", "b@x.test"}}, []byte("Subject: s\r\n\r\n.dot\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := im.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	msgs := fd.Messages()
	if len(msgs) != 1 || msgs[0].From != "app@x.test" || len(msgs[0].To) != 2 || string(msgs[0].Data) != "Subject: s\r\n\r\n.dot\r\n" {
		t.Fatalf("front door got %+v", msgs)
	}
	if left := append(ls(t, im.Dir), ls(t, filepath.Join(im.Dir, importingDir))...); len(left) != 2 {
		t.Errorf("left behind: %v (want only importing and refused)", left)
	}
}

// TestImporterTakesNoLinksAndSetsRefusalsAside: a symbolic link or a hard
// link planted in the drop directory is never read and sent (it could
// point at a file only the relay may read); a message refused for good is
// moved to refused/.
func TestImporterTakesNoLinksAndSetsRefusalsAside(t *testing.T) {
	fd := frontDoor(t)
	im := newImporter(t, fd.Addr())
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte(`{"from":"","rcpt":["thief@x.test"]}`+"\nSubject: the relay's secret\r\n\r\nsecret\r\n"), 0o600)
	if err := os.Symlink(secret, filepath.Join(im.Dir, "msg.symlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(secret, filepath.Join(im.Dir, "msg.hardlink")); err != nil {
		t.Fatal(err)
	}
	Write(im.Dir, Envelope{From: "app@x.test", Recipients: []string{"ok@x.test", "no@refused.test"}}, []byte("Subject: s\r\n\r\nx\r\n"))
	if err := im.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := fd.Count(); n != 0 {
		t.Fatalf("%d messages reached the front door: %+v", n, fd.Messages())
	}
	if got := ls(t, filepath.Join(im.Dir, refusedDir)); len(got) != 3 {
		t.Errorf("refused/ holds %v, want the 3 files", got)
	}
	if got := ls(t, filepath.Join(im.Dir, importingDir)); len(got) != 0 {
		t.Errorf("importing/ still holds %v", got)
	}
	if b, _ := os.ReadFile(secret); !strings.Contains(string(b), "secret") {
		t.Error("the link's target was changed")
	}
}

// TestImporterKeepsWhatTheRelayCannotTakeNow: with the front door away,
// the message stays; once it is back, it goes, once.
func TestImporterKeepsWhatTheRelayCannotTakeNow(t *testing.T) {
	fd := frontDoor(t)
	addr := fd.Addr()
	fd.Close()
	im := newImporter(t, addr)
	Write(im.Dir, Envelope{From: "app@x.test", Recipients: []string{"a@x.test"}}, []byte("Subject: s\r\n\r\nx\r\n"))
	err := im.Once(context.Background())
	var ue *UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("Once: %v, want UnreachableError", err)
	}
	if got := ls(t, filepath.Join(im.Dir, importingDir)); len(got) != 1 {
		t.Fatalf("importing/ holds %v", got)
	}
	back, err := sink.Start(sink.Options{NoTLS: true, Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if err := im.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	im.Once(context.Background())
	if n := back.Count(); n != 1 {
		t.Errorf("%d deliveries, want 1", n)
	}
}

// TestImporterAfterARestartSkipsWhatTheRelayTook: a file claimed by an
// earlier run (killed between the relay's 250 and the removal) is not
// submitted again to the recipients the relay says it took under its
// HELO; a file this run claimed is submitted without asking.
func TestImporterAfterARestartSkipsWhatTheRelayTook(t *testing.T) {
	fd := frontDoor(t)
	first := newImporter(t, fd.Addr())
	Write(first.Dir, Envelope{From: "app@x.test", Recipients: []string{"a@x.test", "b@x.test"}}, []byte("Subject: s\r\n\r\nx\r\n"))
	first.sure = map[string]bool{}
	if err := first.claim(); err != nil {
		t.Fatal(err)
	}
	claimed := ls(t, filepath.Join(first.Dir, importingDir))
	if len(claimed) != 1 {
		t.Fatalf("claimed %v", claimed)
	}
	var asked []string
	queued := func(helo string) ([]string, error) {
		asked = append(asked, helo)
		if helo == "drop-"+claimed[0] {
			return []string{"a@x.test"}, nil
		}
		return nil, nil
	}
	next := &Importer{Dir: first.Dir, Addr: fd.Addr(), Interval: time.Second, Log: first.Log, Queued: queued}
	Write(first.Dir, Envelope{From: "app@x.test", Recipients: []string{"c@x.test"}}, []byte("Subject: s\r\n\r\nx\r\n"))
	if err := next.Once(context.Background()); err != nil {
		t.Fatal(err)
	}
	msgs := fd.Messages()
	if len(msgs) != 2 || strings.Join(msgs[0].To, ",") != "b@x.test" || strings.Join(msgs[1].To, ",") != "c@x.test" {
		t.Fatalf("submitted %+v, want the message for b@x.test only, then the new one", msgs)
	}
	if len(asked) != 1 || asked[0] != "drop-"+claimed[0] {
		t.Errorf("asked about %v, want only the earlier run's file", asked)
	}
	if left := ls(t, filepath.Join(first.Dir, importingDir)); len(left) != 0 {
		t.Errorf("importing/ still holds %v", left)
	}
}

// TestImporterKeepsAFileWhenTheRelayCannotBeAsked: when the relay cannot be asked,
// a file claimed earlier stays for the next try rather than going twice.
func TestImporterKeepsAFileWhenTheRelayCannotBeAsked(t *testing.T) {
	fd := frontDoor(t)
	im := newImporter(t, fd.Addr())
	Write(im.Dir, Envelope{From: "app@x.test", Recipients: []string{"a@x.test"}}, []byte("Subject: s\r\n\r\nx\r\n"))
	im.sure = map[string]bool{}
	if err := im.claim(); err != nil {
		t.Fatal(err)
	}
	im.sure = map[string]bool{} // as if claimed by an earlier run
	im.Queued = func(string) ([]string, error) { return nil, errors.New("spool unreadable") }
	if err := im.Once(context.Background()); err == nil || !strings.Contains(err.Error(), "spool unreadable") {
		t.Errorf("Once: %v, want the lookup's error", err)
	}
	if fd.Count() != 0 || len(ls(t, filepath.Join(im.Dir, importingDir))) != 1 {
		t.Errorf("the file went (%d) or left importing/", fd.Count())
	}
}

func TestWriteMakesAPrivateFileUnderAFreshName(t *testing.T) {
	dir := t.TempDir()
	old := syscall.Umask(0o077)
	name, err := Write(dir, Envelope{Recipients: []string{"a@x.test"}}, []byte("x\r\n"))
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(name)
	if !strings.HasPrefix(filepath.Base(name), msgPrefix) || fi.Mode().Perm() != FileMode {
		t.Errorf("%s mode %v, want a msg. file with mode %v whatever the umask", name, fi.Mode(), os.FileMode(FileMode))
	}
	f, _ := os.Open(name)
	defer f.Close()
	env, off, err := readEnvelope(f, fi.Size())
	if err != nil || env.Recipients[0] != "a@x.test" || fi.Size()-off != 3 {
		t.Errorf("read back %+v %d %v", env, off, err)
	}
}
