package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// SegmentDamage describes a journal segment that could not be read to its
// end, as Recover found and handled it. The spool only reports it; the
// relay decides how to tell the operator (see Store.Damaged).
type SegmentDamage struct {
	// Segment is the segment's path in journal/.
	Segment string
	// MovedTo is where it went under corrupt/; "" when it could not be
	// moved aside (see Err) and stays in journal/, read again at the next
	// start and never deleted.
	MovedTo string
	// Recovered counts the live messages read from it whole, each now a
	// file of its own in msg/ (or, if Err is set, still in the journal):
	// they are delivered as usual.
	Recovered int
	// Unreadable counts the bytes of it that are in no intact record:
	// what could not be read. A record whose write a crash cut off (never
	// acknowledged) is counted here too.
	Unreadable int64
	// Err is why the segment could not be moved aside, if it was not.
	Err error
}

// Damaged returns the journal segments that the last Recover found
// damaged and what it did with each.
func (s *Store) Damaged() []SegmentDamage { return slices.Clone(s.damage) }

// salvage handles the damaged segments of the journal, with the spool
// locked and the journal writable, before anything is collected.
//
// Their live messages are moved out ("spilled") to msg/, each durable
// before anything else happens, and so are those of every older segment:
// a damaged segment may have held (in its unreadable part, or readable but
// about to go with it) the done records of older messages, which would
// come back to life at the next start once it is gone. Then the damaged
// segment is moved to corrupt/. A kill at any point repeats the work at the
// next start (a message already in msg/ is skipped there), so nothing
// acknowledged is lost; at worst a message is delivered twice.
func (s *Store) salvage() []SegmentDamage {
	j := s.j
	j.mu.Lock()
	last := -1
	for i, seg := range j.segs {
		if seg.unreadable > 0 {
			last = i
		}
	}
	if last < 0 {
		j.mu.Unlock()
		return nil
	}
	older := map[*segment]bool{}
	for _, seg := range j.segs[:last+1] {
		older[seg] = true
	}
	var damaged []*segment
	var out []SegmentDamage
	for _, seg := range j.segs[:last+1] {
		if seg.unreadable > 0 {
			damaged = append(damaged, seg)
			out = append(out, SegmentDamage{Segment: seg.path, Recovered: seg.live, Unreadable: seg.unreadable})
		}
	}
	var ids []string
	for id, m := range j.index {
		if older[m.seg] {
			ids = append(ids, id)
		}
	}
	j.mu.Unlock()
	slices.Sort(ids)

	for _, id := range ids {
		if err := s.Spill(id); err != nil {
			for i := range out {
				out[i].Err = fmt.Errorf("its messages could not all be moved out of the journal (%w); it stays in journal/, its messages are delivered from there", err)
			}
			return out
		}
	}
	for i, seg := range damaged {
		out[i].MovedTo, out[i].Err = j.moveAside(seg, filepath.Join(s.dir, "corrupt"))
	}
	return out
}

// moveAside moves a segment to dst (never over an existing file) and
// forgets it.
func (j *journal) moveAside(seg *segment, dst string) (string, error) {
	name := filepath.Base(seg.path)
	target := filepath.Join(dst, name)
	for i := 1; ; i++ {
		// A link does not replace an existing file, as a rename would:
		// an earlier segment of the same number may be there already.
		err := os.Link(seg.path, target)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || i > 100 {
			return "", err
		}
		target = filepath.Join(dst, fmt.Sprintf("%s.%d", name, i))
	}
	if err := syncDir(dst); err != nil {
		os.Remove(target)
		return "", err
	}
	if err := os.Remove(seg.path); err != nil {
		return "", err
	}
	if err := j.dirSync.Sync(); err != nil {
		return "", err
	}
	j.mu.Lock()
	j.segs = slices.DeleteFunc(j.segs, func(s *segment) bool { return s == seg })
	j.mu.Unlock()
	seg.f.Close()
	return target, nil
}
