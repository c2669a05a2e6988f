package spool

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// openRecovered opens a spool the way the relay does at start.
func openRecovered(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recover(); err != nil {
		t.Fatal(err)
	}
	return s
}

func commitSmall(t *testing.T, s *Store, body string) string {
	t.Helper()
	p, err := s.Create(Envelope{From: "a@b.test", Recipients: []string{"c@d.test"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(p, body)
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	return p.ID()
}

func readBody(t *testing.T, s *Store, id string) string {
	t.Helper()
	m, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, err := io.ReadAll(m.Body())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func segments(t *testing.T, dir string) []string {
	entries, _ := os.ReadDir(filepath.Join(dir, "journal"))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestJournalCommitsSmallMessagesAndRecoversThem(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	small := commitSmall(t, s, "Subject: small\r\n\r\nhi\r\n")
	large := commitSmall(t, s, "Subject: large\r\n\r\n"+strings.Repeat("x", journalMaxMessage)+"\r\n")
	if !s.InJournal(small) || s.InJournal(large) {
		t.Fatalf("small in journal: %v, large in journal: %v", s.InJournal(small), s.InJournal(large))
	}
	if _, err := os.Stat(filepath.Join(dir, "msg", small)); !os.IsNotExist(err) {
		t.Error("a small message got a file of its own")
	}

	// A restart (a new Store on the same directory) finds both.
	s2 := openRecovered(t, dir)
	ids, _ := s2.List()
	if len(ids) != 2 {
		t.Fatalf("after restart: %v", ids)
	}
	if got := readBody(t, s2, small); got != "Subject: small\r\n\r\nhi\r\n" {
		t.Errorf("body %q", got)
	}
	if err := s2.Remove(small); err != nil {
		t.Fatal(err)
	}
	s3 := openRecovered(t, dir)
	if ids, _ := s3.List(); len(ids) != 1 || ids[0] != large {
		t.Errorf("after removing the small one: %v", ids)
	}
}

// TestJournalTornTailIsSavedAndMovedAside appends what a crash in the
// middle of a write leaves: the acknowledged messages before it survive
// (moved to files of their own), the segment goes to corrupt/ rather than
// being deleted, the damage is reported, and new messages go to a new
// segment.
func TestJournalTornTailIsSavedAndMovedAside(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	a := commitSmall(t, s, "one\r\n")
	b := commitSmall(t, s, "two\r\n")
	name := segments(t, dir)[0]
	seg := filepath.Join(dir, "journal", name)
	full := encodeRecord(recMessage, []byte(`{"id":"1zzz","rcpt":["x@y"],"size":3}`), []byte("\nabc"))
	f, _ := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(full[:len(full)-2]) // torn
	f.Close()

	s2 := openRecovered(t, dir)
	ids, _ := s2.List()
	if len(ids) != 2 || readBody(t, s2, a) != "one\r\n" || readBody(t, s2, b) != "two\r\n" {
		t.Fatalf("after a torn tail: %v", ids)
	}
	if s2.InJournal(a) || s2.InJournal(b) {
		t.Error("the messages of a damaged segment are still in the journal")
	}
	d := s2.Damaged()
	if len(d) != 1 || d[0].Segment != seg || d[0].Recovered != 2 || d[0].Unreadable != int64(len(full)-2) || d[0].Err != nil ||
		d[0].MovedTo != filepath.Join(dir, "corrupt", name) {
		t.Fatalf("damage reported: %+v", d)
	}
	if _, err := os.Stat(d[0].MovedTo); err != nil {
		t.Fatalf("the damaged segment is not in corrupt/: %v", err)
	}
	c := commitSmall(t, s2, "three\r\n")
	if segs := segments(t, dir); len(segs) != 1 || segs[0] == name {
		t.Errorf("segments %v; a new one must follow a torn tail", segs)
	}
	s3 := openRecovered(t, dir)
	if ids, _ := s3.List(); len(ids) != 3 || readBody(t, s3, c) != "three\r\n" || readBody(t, s3, a) != "one\r\n" {
		t.Fatalf("after writing behind a torn tail: %v", ids)
	}
	if d := s3.Damaged(); len(d) != 0 {
		t.Errorf("damage reported again at the next start: %+v", d)
	}
}

// TestSpillSurvivesALostDoneRecord moves a message out of the journal and
// then loses the journal's done record, as a crash can: the message must
// come back exactly once.
func TestSpillSurvivesALostDoneRecord(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	id := commitSmall(t, s, "Subject: spilled\r\n\r\nbody\r\n")
	seg := filepath.Join(dir, "journal", segments(t, dir)[0])
	fi, _ := os.Stat(seg)
	if err := s.Spill(id); err != nil {
		t.Fatal(err)
	}
	if s.InJournal(id) {
		t.Fatal("still in the journal after the spill")
	}
	if got := readBody(t, s, id); got != "Subject: spilled\r\n\r\nbody\r\n" {
		t.Fatalf("spilled body %q", got)
	}
	os.Truncate(seg, fi.Size()) // the done record never reached the disk

	s2 := openRecovered(t, dir)
	ids, _ := s2.List()
	if len(ids) != 1 || ids[0] != id || s2.InJournal(id) {
		t.Fatalf("after a lost done record: %v (in journal: %v)", ids, s2.InJournal(id))
	}
	if got := readBody(t, s2, id); got != "Subject: spilled\r\n\r\nbody\r\n" {
		t.Errorf("body %q", got)
	}
}

func TestSegmentsRotateAndAreCollectedInOrder(t *testing.T) {
	old := segmentMaxSize
	segmentMaxSize = 2048
	defer func() { segmentMaxSize = old }()
	dir := t.TempDir()
	s := openRecovered(t, dir)
	var ids []string
	for i := 0; i < 40; i++ {
		ids = append(ids, commitSmall(t, s, strings.Repeat("m", 200)+"\r\n"))
	}
	if n := len(segments(t, dir)); n < 4 {
		t.Fatalf("%d segments for 40 messages of 200 bytes with 2 KiB segments", n)
	}
	// While the oldest segment holds a live message, no segment goes.
	first := segments(t, dir)[0]
	second := segments(t, dir)[1]
	for _, id := range ids[1:] {
		s.Remove(id)
	}
	if got := segments(t, dir); got[0] != first || got[1] != second {
		t.Errorf("segments collected while the oldest holds a live message: %v", got)
	}
	s.Remove(ids[0])
	if n := len(segments(t, dir)); n > 1 {
		t.Errorf("%d segments left after every message was done; want only the current one", n)
	}
	if ids, _ := openRecovered(t, dir).List(); len(ids) != 0 {
		t.Errorf("after all were done a restart finds %v", ids)
	}
}

// TestJournalGroupCommit commits from many goroutines at once: every
// message is durable and readable, and they share fdatasyncs.
func TestJournalGroupCommit(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	const n = 64
	var wg sync.WaitGroup
	ids := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
			io.WriteString(p, strings.Repeat(string(rune('a'+i%26)), 100))
			if err := p.Commit(); err != nil {
				t.Error(err)
			}
			ids[i] = p.ID()
		}()
	}
	wg.Wait()
	s.j.mu.Lock()
	syncs := s.j.syncs
	s.j.mu.Unlock()
	if syncs >= n || syncs == 0 {
		t.Errorf("%d fdatasyncs for %d concurrent commits", syncs, n)
	}
	t.Logf("%d concurrent commits shared %d fdatasyncs", n, syncs)
	s2 := openRecovered(t, dir)
	for i, id := range ids {
		if got := readBody(t, s2, id); got != strings.Repeat(string(rune('a'+i%26)), 100) {
			t.Fatalf("message %d: %q", i, got)
		}
	}
}

// TestGroupWaitsForMessagesBeingReceived: a commit while another message
// is still being received waits (up to lingerMax) for it, so both share one
// fdatasync; when the other is aborted or outgrows the journal instead,
// the waiting commit goes at once.
func TestGroupWaitsForMessagesBeingReceived(t *testing.T) {
	saved := lingerMax
	lingerMax = time.Minute // long enough that only the right wake-up ends a wait
	defer func() { lingerMax = saved }()
	s := openRecovered(t, t.TempDir())
	syncs := func() int {
		s.j.mu.Lock()
		defer s.j.mu.Unlock()
		return s.j.syncs
	}
	commitWhile := func(other func(*Pending)) {
		t.Helper()
		first, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
		second, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
		io.WriteString(first, "one")
		done := make(chan error, 1)
		go func() { done <- first.Commit() }()
		select {
		case err := <-done:
			t.Fatalf("the first commit did not wait for the message being received (err %v)", err)
		case <-time.After(100 * time.Millisecond):
		}
		other(second)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the first commit is still waiting after the other message finished")
		}
	}
	before := syncs()
	commitWhile(func(p *Pending) {
		io.WriteString(p, "two")
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
	})
	if n := syncs() - before; n != 1 {
		t.Errorf("two messages committed together took %d fdatasyncs, want 1", n)
	}
	commitWhile(func(p *Pending) { p.Abort() })
	commitWhile(func(p *Pending) { p.ForDirectDelivery() })
	commitWhile(func(p *Pending) {
		io.WriteString(p, strings.Repeat("x", journalMaxMessage+1)) // to a file of its own
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzJournalRecords feeds the segment reader arbitrary bytes: every
// record it reports lies inside the data, in order and without overlap,
// records and unreadable bytes add up to the whole, and a whole record
// after any damage is still found.
func FuzzJournalRecords(f *testing.F) {
	msg := encodeRecord(recMessage, []byte(`{"id":"1abc","rcpt":["c@d"],"size":2}`), []byte("\nhi"))
	f.Add(msg)
	f.Add(append(slices.Clip(msg), encodeRecord(recDone, []byte("1abc"))...))
	f.Add([]byte("TRJ1M\xff\xff\xff\xff"))
	f.Add(append([]byte("TRJ1M\x00\x00\x00\x05\x00\x00\x00\x00TRJ1"), msg...))
	f.Add(append(slices.Clip(msg[:len(msg)-1]), msg...))
	sentinel := encodeRecord(recDone, []byte("sentinel"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, in := range [][]byte{data, append(slices.Clip(data), sentinel...)} {
			var covered, next int64
			unreadable := readRecords(bytes.NewReader(in), int64(len(in)), func(typ byte, payload []byte, off int64) {
				end := off + recordHeaderSize + int64(len(payload))
				if off < next || end > int64(len(in)) {
					t.Fatalf("record at %d..%d: out of order or outside the data (%d bytes, previous ended at %d)", off, end, len(in), next)
				}
				if typ == recMessage {
					if env, bodyOff, ok := decodeMessagePayload(payload); ok && (bodyOff+env.Size != int64(len(payload)) || !validID(env.ID)) {
						t.Fatalf("inconsistent message record %+v", env)
					}
				}
				covered += end - off
				next = end
			})
			if unreadable < 0 || covered+unreadable != int64(len(in)) {
				t.Fatalf("%d bytes in records and %d unreadable of %d", covered, unreadable, len(in))
			}
			if len(in) > len(data) && next != int64(len(in)) {
				t.Fatalf("the whole record at the end (after %d bytes of anything) was not found", len(data))
			}
		}
	})
}

// TestFullDiskKeepsTheSegment: a journal write that fails part-way, as on
// a full disk, fails only its own commits; the torn bytes are cut off, the
// next commit goes to the same segment (a full disk must not leave a new
// segment file behind per refused message), and after a restart exactly
// the committed messages are there.
func TestFullDiskKeepsTheSegment(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	before := commitSmall(t, s, "before the disk filled up")

	saved := writeSegment
	writeSegment = func(f *os.File, b []byte, off int64) (int, error) {
		n, _ := f.WriteAt(b[:len(b)/2], off) // half a record reaches the file
		return n, syscall.ENOSPC
	}
	p, _ := s.Create(Envelope{Recipients: []string{"a@b.test"}})
	io.WriteString(p, "refused: no space")
	err := p.Commit()
	writeSegment = saved
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("commit on a full disk: %v, want ENOSPC", err)
	}
	after := commitSmall(t, s, "after space was freed")
	if segs := segments(t, dir); len(segs) != 1 {
		t.Errorf("segments after a failed write: %v, want the one segment, still in use", segs)
	}

	s2 := openRecovered(t, dir)
	if got := readBody(t, s2, before); got != "before the disk filled up" {
		t.Errorf("message before the failure: %q", got)
	}
	if got := readBody(t, s2, after); got != "after space was freed" {
		t.Errorf("message after the failure: %q (a torn record left in the segment hides what follows it)", got)
	}
	if _, ok := s2.j.lookup(p.ID()); ok {
		t.Error("the refused message is in the journal after a restart")
	}
}

// TestRecordLengthAlwaysHoldsANul pins what resync relies on: every
// record's length field starts with a NUL byte, which no client data can
// contain (the front door refuses NUL), so no record can be forged inside
// a message body.
func TestRecordLengthAlwaysHoldsANul(t *testing.T) {
	if maxRecordPayload >= 1<<24 {
		t.Fatalf("maxRecordPayload = %d: a record's length field could be NUL-free, and a message body could then carry a record that resync accepts", maxRecordPayload)
	}
	rec := encodeRecord(recMessage, make([]byte, maxRecordPayload))
	if rec[5] != 0 {
		t.Fatalf("the length field of the largest record starts with %#x, not NUL", rec[5])
	}
}

// TestQuarantineJournalMessage: a journal record whose id reads but
// whose envelope does not decode is quarantined to corrupt/<id>.record
// and marked done, so it no longer holds its segment (and every later
// one) on disk; a restart does not bring it back.
func TestQuarantineJournalMessage(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	good := commitSmall(t, s, "Subject: good\r\n\r\nbody\r\n")
	segs := segments(t, dir)
	f, err := os.OpenFile(filepath.Join(dir, "journal", segs[len(segs)-1]), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	const bad = "zzzzbadenvelope"
	if _, err := f.Write(encodeRecord(recMessage, []byte(`{"id":"`+bad+`","rcpt":[}`+"\n"), []byte("body\r\n"))); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s2 := openRecovered(t, dir)
	if !s2.InJournal(bad) {
		t.Fatal("the damaged record was not indexed (the test does not test what it means to)")
	}
	if _, err := s2.Open(bad); err == nil {
		t.Fatal("a record whose envelope does not decode opened")
	}
	if err := s2.Quarantine(bad); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "corrupt", bad+".record"))
	if err != nil || !strings.Contains(string(raw), `"id":"`+bad+`"`) {
		t.Fatalf("quarantined copy: %q, %v", raw, err)
	}
	if s2.InJournal(bad) {
		t.Error("still live in the journal after quarantine")
	}
	s3 := openRecovered(t, dir)
	if s3.InJournal(bad) {
		t.Error("back in the journal after a restart")
	}
	if got := readBody(t, s3, good); got != "Subject: good\r\n\r\nbody\r\n" {
		t.Errorf("the good message: %q", got)
	}
}
