package spool

import (
	"fmt"
	"path/filepath"
	"slices"
)

// Compaction. A segment is deleted only once it and every older segment
// hold no live message (collect). Mail that waits long without being
// attempted — parked with a down destination — would keep the segment it
// arrived in, and with it every later one, on disk for as long as it
// waits: with one destination of many down, all the mail received since
// the outage began. Compact moves the live messages of such a segment to
// files of their own in msg/ (Spill), so that it and the emptied ones
// behind it can go.
//
// Only a sparse segment is compacted: one whose live messages, as files
// of their own (whole 4 KiB blocks each), would take at most a quarter of
// a full segment, and are at most a quarter of the messages it held
// (compactSparse). Compacting a full segment then frees at least three
// times the disk it writes, and costs at most 4,096 files and fsyncs per
// 64 MiB segment. A segment that is mostly live — a full outage, every
// message waiting — is left alone, also when it is short (the open
// segment of a relay restarted during an outage): as files its messages
// would take more disk than the segment, and 200,000 of them 200,000
// files.
//
// Crash safety is Spill's: a message's file is durable before its
// journal copy is marked done, and at start a file in msg/ wins over a
// journal record of the same id; the segment is deleted only after every
// live message in it was moved out.

// compactSparse: a segment is compacted when its live messages would take
// at most 1/compactSparse of a full segment as files.
const compactSparse = 4

// compactMaxMoves bounds the messages one pass moves (each a file and two
// fsyncs, which share the disk with the commits of arriving mail): the
// backlog of days of a partial outage is worked off over several passes,
// not in one long one. A segment is moved whole or not at all in a pass;
// one sparse segment holds at most 4,096.
var compactMaxMoves = 8192

// Compaction is what Compact did with one journal segment.
type Compaction struct {
	Segment string // the segment's file name in journal/
	Moved   int    // messages moved to files of their own
	Busy    int    // live messages not moved: the claim was refused
	// Freed is the size of the segments deleted meanwhile: this one once
	// nothing live was left in it, and the emptied ones behind it.
	Freed int64
}

// Compact moves the live messages of the oldest journal segments that
// hold back collection and are sparse (see compactSparse) to files of
// their own, oldest segment first, so that the segments can be deleted.
// It stops at the first segment that is not sparse, is the one appends go
// to, or keeps a message it could not move.
//
// claim is asked for each message before it is moved: it grants
// exclusive use of a message that no delivery works on (and returns the
// function that ends it), or refuses one that is busy; a refused message
// stays, and so does its segment until a later pass. The result lists
// each segment compacted, also when an error stopped the pass.
func (s *Store) Compact(claim func(id string) (release func(), ok bool)) ([]Compaction, error) {
	j := s.j
	if !j.isWritable() {
		return nil, nil
	}
	j.collect()
	segs, live := j.sparse()
	var out []Compaction
	budget := compactMaxMoves
	for _, seg := range segs {
		if budget < len(live[seg]) {
			break // the next pass goes on from here
		}
		budget -= len(live[seg])
		c := Compaction{Segment: filepath.Base(seg.path)}
		before := j.removedBytes()
		var err error
		for _, id := range live[seg] {
			release, ok := claim(id)
			if !ok {
				c.Busy++
				continue
			}
			var moved bool
			moved, err = s.spill(id)
			release()
			if err != nil {
				break
			}
			if moved {
				c.Moved++
			}
		}
		c.Freed = j.removedBytes() - before
		out = append(out, c)
		if err != nil {
			return out, fmt.Errorf("spool: compacting journal segment %s: %w", c.Segment, err)
		}
		if c.Busy > 0 {
			break // it stays, and so does everything after it
		}
	}
	return out, nil
}

// sparse returns the segments, oldest first, that Compact works on — the
// sparse ones up to the first that is not, is the open one or damaged;
// segments already empty are passed over — and the ids of the live
// messages of each, oldest first. The index is read once, and only when
// there is a segment to compact.
func (j *journal) sparse() ([]*segment, map[*segment][]string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	full := j.segmentSize()
	var segs []*segment
	for _, seg := range j.segs {
		if seg == j.cur || seg.unreadable > 0 {
			break
		}
		if seg.live == 0 {
			continue
		}
		if seg.liveCost*compactSparse > max(seg.size, full) || seg.live*compactSparse > seg.msgs {
			break
		}
		segs = append(segs, seg)
	}
	if len(segs) == 0 {
		return nil, nil
	}
	live := make(map[*segment][]string, len(segs))
	for _, seg := range segs {
		live[seg] = nil
	}
	for id, m := range j.index {
		if ids, ok := live[m.seg]; ok {
			live[m.seg] = append(ids, id)
		}
	}
	for _, ids := range live {
		slices.Sort(ids)
	}
	return segs, live
}

// removedBytes is the size of all segments collect deleted so far.
func (j *journal) removedBytes() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.removed
}
