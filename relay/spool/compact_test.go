package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// claimAll grants every claim: nothing is being delivered.
func claimAll(string) (func(), bool) { return func() {}, true }

// fillSegments commits n messages of about 2 KiB into 64 KiB segments
// (about 29 a segment) and removes all but every keepEvery-th, as
// deliveries do; it returns the kept ids and every body by id.
func fillSegments(t *testing.T, s *Store, n, keepEvery int) (kept []string, bodies map[string]string) {
	t.Helper()
	s.SetSegmentSize(64 << 10)
	bodies = map[string]string{}
	for i := 0; i < n; i++ {
		body := fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat(string(rune('a'+i%26)), 2000))
		id := commitSmall(t, s, body)
		bodies[id] = body
		if i%keepEvery == 0 {
			kept = append(kept, id)
		} else if err := s.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	return kept, bodies
}

// checkSpool checks that the spool at dir holds exactly want, once each,
// with its body intact, after a restart.
func checkSpool(t *testing.T, dir string, want []string, bodies map[string]string) *Store {
	t.Helper()
	s := openRecovered(t, dir)
	ids, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	want = slices.Sorted(slices.Values(want)) // as List: ids of one millisecond sort by their random part
	if !slices.Equal(ids, want) {
		t.Fatalf("after a restart the spool holds %d messages %v, want %d %v", len(ids), ids, len(want), want)
	}
	for _, id := range ids {
		if got := readBody(t, s, id); got != bodies[id] {
			t.Errorf("%s: body of %d bytes differs from the %d committed", id, len(got), len(bodies[id]))
		}
	}
	return s
}

// TestCompactionFreesSparseSegments: segments in which a few messages
// still wait (one in ten) are compacted — the waiting ones move to files
// of their own — and deleted, the open one excepted; a restart finds
// exactly the waiting messages, intact.
func TestCompactionFreesSparseSegments(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	kept, bodies := fillSegments(t, s, 150, 10)
	before := segments(t, dir)
	if len(before) < 4 {
		t.Fatalf("%d segments; the test wants several", len(before))
	}

	done, err := s.Compact(claimAll)
	if err != nil {
		t.Fatal(err)
	}
	if after := segments(t, dir); len(after) != 1 || after[0] != before[len(before)-1] {
		t.Errorf("segments after compaction: %v, want only the open one %s", after, before[len(before)-1])
	}
	moved := 0
	var freed int64
	for _, c := range done {
		moved += c.Moved
		freed += c.Freed
	}
	inJournal := 0
	for _, id := range kept {
		if s.InJournal(id) {
			inJournal++
		} else if _, err := os.Stat(filepath.Join(dir, "msg", id)); err != nil {
			t.Errorf("%s neither in the journal nor in msg/: %v", id, err)
		}
	}
	if moved != len(kept)-inJournal || moved == 0 || len(done) != len(before)-1 || freed < int64(len(before)-1)*(60<<10) {
		t.Errorf("compaction of %d segments moved %d and freed %d bytes; %d of %d waiting messages remain in the open segment: %+v",
			len(done), moved, freed, inJournal, len(kept), done)
	}
	checkSpool(t, dir, kept, bodies)
}

// TestCompactionLeavesDenseSegments: in a full outage every message of
// every segment waits; compaction must not turn that into a file per
// message.
func TestCompactionLeavesDenseSegments(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	// One in three waits: as files they would take more than a quarter of
	// a segment, so it is not compacted either.
	kept, bodies := fillSegments(t, s, 100, 3)
	before := segments(t, dir)
	done, err := s.Compact(claimAll)
	if err != nil || len(done) != 0 {
		t.Fatalf("Compact on dense segments: %+v, %v", done, err)
	}
	if after := segments(t, dir); !slices.Equal(after, before) {
		t.Errorf("segments %v became %v", before, after)
	}
	if files, _ := os.ReadDir(filepath.Join(dir, "msg")); len(files) != 0 {
		t.Errorf("%d messages moved to files of their own from dense segments", len(files))
	}
	checkSpool(t, dir, kept, bodies)
}

// TestCompactionSkipsBusyMessages: a message whose claim is refused (a
// delivery works on it) is not touched; its segment and every later one
// stay until a later pass can move it.
func TestCompactionSkipsBusyMessages(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	kept, bodies := fillSegments(t, s, 150, 10)
	before := segments(t, dir)
	busy := kept[0] // in the oldest segment
	var claimed []string
	done, err := s.Compact(func(id string) (func(), bool) {
		claimed = append(claimed, id)
		return func() {}, id != busy
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 1 || done[0].Busy != 1 || done[0].Freed != 0 || done[0].Segment != before[0] {
		t.Errorf("with the oldest segment's first message busy: %+v", done)
	}
	if !s.InJournal(busy) {
		t.Error("a busy message was moved")
	}
	if after := segments(t, dir); !slices.Equal(after, before) {
		t.Errorf("segments %v became %v while the oldest keeps a busy message", before, after)
	}
	for _, id := range claimed {
		if id != busy && s.InJournal(id) {
			t.Errorf("%s was claimed but not moved", id)
		}
	}
	if _, err := s.Compact(claimAll); err != nil {
		t.Fatal(err)
	}
	if after := segments(t, dir); len(after) != 1 {
		t.Errorf("segments once nothing is busy: %v", after)
	}
	checkSpool(t, dir, kept, bodies)
}

// TestCompactionKilledBetweenFileAndDoneRecord takes the spool as a
// kill -9 would leave it right after a moved message's file was committed
// and before its journal copy was marked done: a restart finds every
// message exactly once (the file wins), and compaction then finishes.
func TestCompactionKilledBetweenFileAndDoneRecord(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	kept, bodies := fillSegments(t, s, 150, 10)
	snap := filepath.Join(t.TempDir(), "spool")
	var cut string
	spillCommitted = func(id string) {
		if cut != "" {
			return
		}
		cut = id
		if err := os.CopyFS(snap, os.DirFS(dir)); err != nil {
			t.Fatal(err)
		}
	}
	defer func() { spillCommitted = nil }()
	if _, err := s.Compact(claimAll); err != nil {
		t.Fatal(err)
	}
	if cut == "" {
		t.Fatal("nothing was moved")
	}
	os.Chmod(snap, 0o700)

	// The snapshot holds the message twice on disk: in msg/ and live in
	// the journal.
	if _, err := os.Stat(filepath.Join(snap, "msg", cut)); err != nil {
		t.Fatalf("the snapshot lacks the committed file: %v", err)
	}
	s2 := checkSpool(t, snap, kept, bodies)
	old := segments(t, snap)
	if s2.InJournal(cut) {
		t.Errorf("%s: the journal copy won over the committed file", cut)
	}
	if _, err := s2.Compact(claimAll); err != nil {
		t.Fatal(err)
	}
	// The done records went to a new segment: every old one went.
	if after := segments(t, snap); len(after) != 1 || slices.Contains(old, after[0]) {
		t.Errorf("segments %v after compaction resumed on the restarted spool, which had %v", after, old)
	}
	checkSpool(t, snap, kept, bodies)
}

// TestListWhileMessagesMoveOut: List never misses a message that is
// being moved out of the journal (Spill, compaction) while it runs: the
// drop importer's exactly-once check relies on List.
func TestListWhileMessagesMoveOut(t *testing.T) {
	s := openRecovered(t, t.TempDir())
	s.SetSegmentSize(64 << 10)
	kept, _ := fillSegments(t, s, 600, 2)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	missed := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ids, err := s.List()
			if err != nil {
				t.Error(err)
				return
			}
			have := make(map[string]int, len(ids))
			for _, id := range ids {
				have[id]++
			}
			for _, id := range kept {
				if have[id] != 1 {
					missed++
				}
			}
		}
	}()
	for _, id := range kept {
		if err := s.Spill(id); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if missed > 0 {
		t.Errorf("List missed or doubled a message being moved out of the journal %d times", missed)
	}
}

// TestShortSegmentOfWaitingMailIsNotCompacted: a relay restarted during
// a full outage leaves a short segment in which every message waits; it
// is not sparse, so it is not turned into a file per message.
func TestShortSegmentOfWaitingMailIsNotCompacted(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	for i := 0; i < 300; i++ {
		commitSmall(t, s, fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("x", 1000)))
	}
	s2 := openRecovered(t, dir) // the open segment is an old one now
	if _, err := s2.Compact(claimAll); err != nil {
		t.Fatal(err)
	}
	if files, _ := os.ReadDir(filepath.Join(dir, "msg")); len(files) > 0 {
		t.Errorf("a short segment in which every message waits was compacted into %d files", len(files))
	}
}

// TestCompactionPassIsBounded: one pass moves at most compactMaxMoves
// messages, whole segments at a time; the next pass goes on.
func TestCompactionPassIsBounded(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	kept, _ := fillSegments(t, s, 600, 8)
	old := compactMaxMoves
	t.Cleanup(func() { compactMaxMoves = old })
	compactMaxMoves = 10
	done, err := s.Compact(claimAll)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, c := range done {
		moved += c.Moved
	}
	if moved == 0 || moved > 10 {
		t.Fatalf("first pass moved %d messages, want 1 to 10", moved)
	}
	compactMaxMoves = old
	if _, err := s.Compact(claimAll); err != nil {
		t.Fatal(err)
	}
	files, _ := os.ReadDir(filepath.Join(dir, "msg"))
	if len(files) < len(kept)-40 { // all but those of the open segment and its neighbour
		t.Errorf("after the second pass %d of %d waiting messages are files", len(files), len(kept))
	}
}
