package spool

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// recordAt returns the offset of the journal record of message id in seg.
func recordAt(t *testing.T, seg []byte, id string) int {
	t.Helper()
	i := bytes.Index(seg, []byte(`{"id":"`+id+`"`))
	if i < recordHeaderSize || string(seg[i-recordHeaderSize:i-recordHeaderSize+4]) != recordMagic {
		t.Fatalf("no record of %s in the segment", id)
	}
	return i - recordHeaderSize
}

// TestJournalRecoversRecordsAfterADamagedOne damages one record in the
// middle of a segment — its body, then its length field — and restarts:
// the records after it are recovered (their checksums prove them whole;
// magic bytes inside a body are not taken for a record), the segment is
// moved to corrupt/ instead of being deleted, and the damage is reported
// with what was saved and what could not be read.
func TestJournalRecoversRecordsAfterADamagedOne(t *testing.T) {
	// A body holding the start of a record, as any client may send.
	fake := "Subject: x\r\n\r\n" + string(encodeRecord(recDone, []byte("1zzz"))[:recordHeaderSize]) + "TRJ1M\x00\x00\x00\x05\r\n"
	for _, damage := range []struct {
		name string
		do   func(seg []byte, off int)
	}{
		{"body", func(seg []byte, off int) { seg[len(seg)-1-recordHeaderSize-12] ^= 0x40 }},
		{"length", func(seg []byte, off int) { binary.BigEndian.PutUint32(seg[off+5:], 0xfffffff0) }},
		{"magic", func(seg []byte, off int) { seg[off] = 'X' }},
	} {
		t.Run(damage.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openRecovered(t, dir)
			before := commitSmall(t, s, fake+"before")
			lost := commitSmall(t, s, fake+"damaged")
			var after []string
			for i := range 3 {
				after = append(after, commitSmall(t, s, fake+"after "+strings.Repeat("!", i)))
			}
			name := segments(t, dir)[0]
			path := filepath.Join(dir, "journal", name)
			seg, _ := os.ReadFile(path)
			off := recordAt(t, seg, lost)
			end := recordAt(t, seg, after[0])
			damaged := slices.Clone(seg[:end]) // the damaged record is the last one here
			damage.do(damaged, off)
			copy(seg, damaged)
			os.WriteFile(path, seg, 0o600)

			s2 := openRecovered(t, dir)
			ids, _ := s2.List()
			want := append([]string{before}, after...)
			slices.Sort(want)
			if !slices.Equal(ids, want) {
				t.Fatalf("after damage to one record: %d messages %v, want the %d others", len(ids), ids, len(want))
			}
			for i, id := range after {
				if got := readBody(t, s2, id); got != fake+"after "+strings.Repeat("!", i) {
					t.Errorf("message after the damaged one: %q", got)
				}
			}
			d := s2.Damaged()
			if len(d) != 1 || d[0].Recovered != 4 || d[0].Unreadable != int64(end-off) || d[0].Err != nil {
				t.Fatalf("damage reported: %+v, want 4 recovered and %d bytes unreadable", d, end-off)
			}
			if kept, err := os.ReadFile(d[0].MovedTo); err != nil || !bytes.Equal(kept, seg) || filepath.Dir(d[0].MovedTo) != filepath.Join(dir, "corrupt") {
				t.Fatalf("the damaged segment was not kept in corrupt/ as it was (%v)", err)
			}
			if slices.Contains(segments(t, dir), name) {
				t.Error("the damaged segment is still in journal/")
			}
			// Delivered and restarted: nothing comes back.
			for _, id := range ids {
				s2.Remove(id)
			}
			if ids, _ := openRecovered(t, dir).List(); len(ids) != 0 {
				t.Errorf("after every message was done a restart finds %v", ids)
			}
		})
	}
}

// TestDamagedSegmentKeepsOlderDoneRecords: a damaged segment may hold the
// done record of a message of an older segment. Once the damaged one is
// gone, that message must not come back to life (a second delivery),
// and the older segment's live messages stay deliverable.
func TestDamagedSegmentKeepsOlderDoneRecords(t *testing.T) {
	old := segmentMaxSize
	defer func() { segmentMaxSize = old }()
	dir := t.TempDir()
	s := openRecovered(t, dir)
	delivered := commitSmall(t, s, "delivered") // both in segment 0
	waiting := commitSmall(t, s, "waiting")
	segmentMaxSize = 1  // from now on a segment per write
	s.Remove(delivered) // its done record: segment 1
	segs := segments(t, dir)
	if len(segs) != 2 {
		t.Fatalf("segments %v", segs)
	}
	// Damage the segment holding the done record of "delivered".
	f, _ := os.OpenFile(filepath.Join(dir, "journal", segs[1]), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("TRJ1Mtorn"))
	f.Close()

	s2 := openRecovered(t, dir)
	if ids, _ := s2.List(); !slices.Equal(ids, []string{waiting}) {
		t.Fatalf("after the damage: %v, want only %s", ids, waiting)
	}
	if d := s2.Damaged(); len(d) != 1 || d[0].Recovered != 0 || d[0].Unreadable != 9 || d[0].MovedTo == "" {
		t.Fatalf("damage reported: %+v", d)
	}
	s3 := openRecovered(t, dir)
	if ids, _ := s3.List(); !slices.Equal(ids, []string{waiting}) {
		t.Fatalf("at the next start: %v, want only %s (a delivered message came back)", ids, waiting)
	}
	if got := readBody(t, s3, waiting); got != "waiting" {
		t.Errorf("body %q", got)
	}
}

// TestSalvageCutShortIsRepeated: a kill after the messages were saved but
// before the damaged segment's removal reached the disk finds it again in
// journal/ at the next start: nothing is duplicated, and it is moved aside
// again without overwriting the copy already in corrupt/.
func TestSalvageCutShortIsRepeated(t *testing.T) {
	dir := t.TempDir()
	s := openRecovered(t, dir)
	a := commitSmall(t, s, "one")
	name := segments(t, dir)[0]
	path := filepath.Join(dir, "journal", name)
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("TRJ1"))
	f.Close()
	seg, _ := os.ReadFile(path)

	s2 := openRecovered(t, dir)
	first := s2.Damaged()
	if len(first) != 1 || first[0].Recovered != 1 {
		t.Fatalf("damage reported: %+v", first)
	}
	os.WriteFile(path, seg, 0o600) // as if the unlink had not reached the disk

	s3 := openRecovered(t, dir)
	if ids, _ := s3.List(); !slices.Equal(ids, []string{a}) || readBody(t, s3, a) != "one" {
		t.Fatalf("after a repeated salvage: %v", ids)
	}
	again := s3.Damaged()
	if len(again) != 1 || again[0].Recovered != 0 || again[0].MovedTo == first[0].MovedTo || again[0].MovedTo == "" {
		t.Fatalf("second salvage: %+v (first moved to %s)", again, first[0].MovedTo)
	}
	for _, p := range []string{first[0].MovedTo, again[0].MovedTo} {
		if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, seg) {
			t.Errorf("%s: not the damaged segment (%v)", p, err)
		}
	}
}

// TestSalvageThatCannotSaveKeepsTheSegment: when the messages of a damaged
// segment cannot be moved out (here: msg/ is not writable), the segment
// stays in journal/, is never deleted, and its messages stay deliverable
// from it.
func TestSalvageThatCannotSaveKeepsTheSegment(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes to a read-only directory")
	}
	dir := t.TempDir()
	s := openRecovered(t, dir)
	a := commitSmall(t, s, "one")
	name := segments(t, dir)[0]
	f, _ := os.OpenFile(filepath.Join(dir, "journal", name), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("TRJ1"))
	f.Close()
	msgDir := filepath.Join(dir, "msg")
	os.Chmod(msgDir, 0o500)
	defer os.Chmod(msgDir, 0o700)

	s2 := openRecovered(t, dir)
	d := s2.Damaged()
	if len(d) != 1 || d[0].Err == nil || d[0].MovedTo != "" {
		t.Fatalf("damage reported: %+v", d)
	}
	if !slices.Contains(segments(t, dir), name) || readBody(t, s2, a) != "one" {
		t.Fatal("the damaged segment or its message is gone")
	}
	commitSmall(t, s2, "two") // and the journal goes on
	if !slices.Contains(segments(t, dir), name) {
		t.Fatal("the damaged segment was collected")
	}
	os.Chmod(msgDir, 0o700)
	s3 := openRecovered(t, dir)
	if ids, _ := s3.List(); len(ids) != 2 || readBody(t, s3, a) != "one" {
		t.Fatalf("once msg/ is writable again: %v", ids)
	}
	if d := s3.Damaged(); len(d) != 1 || d[0].MovedTo == "" || d[0].Recovered != 1 {
		t.Fatalf("damage reported at the next start: %+v", d)
	}
}
