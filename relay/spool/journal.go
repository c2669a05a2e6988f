package spool

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"tlsrelay/relay/durable"

	"golang.org/x/sys/unix"
)

// The journal is the spool's fast path for small messages. Instead of a
// file of its own per message (one file fsync plus a directory fsync each),
// messages up to journalMaxMessage are appended as records to a shared
// segment file, and every message that arrives while one fdatasync runs is
// made durable by the next one together (group commit). A message is
// answered 250 only after the fdatasync that covers its record returned.
//
// A "done" record marks a message delivered, bounced or moved out; it is
// written without waiting for durability (losing one can only cause a
// duplicate delivery after a crash, never a loss). A message that waits
// (a retry, a hold) is moved out ("spilled") into a file of its own in
// msg/ once its segment is no longer the one being appended to, so old
// segments are short-lived; a segment is deleted once it and every older
// segment hold no live message. Mail that waits without attempts (parked
// with a down destination) is moved out by compaction once its segment
// is sparse (compact.go).
//
// Record: "TRJ1", type byte ('M' message, 'D' done), payload length
// (uint32, big endian), CRC-32C of type and payload, payload. A message's
// payload is its JSON envelope (at most MaxEnvelopeBytes), a newline, and
// the body (at most journalMaxMessage): the reader takes exactly that much.
//
// A damaged record (a write cut off by a crash or power loss, or damage
// from outside) does not end the reading: the reader skips forward to the
// next record whose checksum proves it whole, since a record's payload
// may hold the magic bytes but not, by chance, a verifying record. A
// segment that could not be read to its end is never deleted: at start
// (Recover) its live messages, and those of older segments whose done
// records it may have held, are moved out to msg/, and then the segment
// is moved to corrupt/ and reported (see salvage.go).

const (
	// journalMaxMessage is the largest body kept in memory while it is
	// received and committed through the journal.
	journalMaxMessage = 64 << 10
	recordMagic       = "TRJ1"
	recordHeaderSize  = 13
	maxRecordPayload  = MaxEnvelopeBytes + 1 + journalMaxMessage
	recMessage        = 'M'
	recDone           = 'D'
)

// segmentMaxSize is when a new segment is started (a variable for tests).
var segmentMaxSize int64 = 64 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type segment struct {
	seq    uint64
	path   string
	f      *os.File
	size   int64 // bytes written (or read, for an old segment)
	live   int   // messages in it not yet done
	failed bool  // a write failed: start a new segment
	// liveCost is the disk its live messages would take as files of
	// their own in msg/ (see fileCost): what compacting it would write.
	liveCost int64
	// msgs counts the message records it holds, live or done.
	msgs int
	// unreadable counts the bytes of an old segment that are in no intact
	// record; such a segment is damaged, and never deleted.
	unreadable int64
}

// jmsg is where a live message of the journal is. Its envelope is not
// kept in memory: it is read from the segment and decoded when the
// message is opened, so that a journal of hundreds of thousands of
// waiting messages costs little memory and little time to load.
type jmsg struct {
	seg     *segment
	envOff  int64 // where the JSON envelope starts in seg
	bodyOff int64 // where the body starts in seg
	size    int64 // the body's length
}

// fileBlock is the file system's allocation unit: a file of its own
// takes whole blocks of it.
const fileBlock = 4096

// fileCost is the disk the message would take as a file of its own in
// msg/: the magic line, the body, the envelope trailer, in whole blocks.
func (m *jmsg) fileCost() int64 {
	n := int64(len(magic)) + m.size + 1 + (m.bodyOff - m.envOff) + trailerLenSize
	return (n + fileBlock - 1) / fileBlock * fileBlock
}

// envelope reads and decodes the message's envelope from its segment.
func (m *jmsg) envelope(id string) (Envelope, error) {
	buf := make([]byte, m.bodyOff-m.envOff)
	if _, err := m.seg.f.ReadAt(buf, m.envOff); err != nil {
		return Envelope{}, err
	}
	var env Envelope
	if len(buf) < 2 || buf[len(buf)-1] != '\n' || decodeEnvelope(buf[:len(buf)-1], &env) != nil ||
		env.ID != id || env.Size != m.size || len(env.Recipients) == 0 {
		return env, fmt.Errorf("%w: journal record of %s does not decode", ErrCorrupt, id)
	}
	return env, nil
}

type jreq struct {
	rec     []byte
	durable bool
	id      string
	msg     *jmsg // for a message record: indexed once written
	done    bool
	err     error
}

type journal struct {
	dir      string
	dirSync  *dirSyncer
	writable bool

	mu      sync.Mutex
	cond    *sync.Cond
	segs    []*segment      // oldest first
	cur     *segment        // where appends go; nil until the first
	index   map[string]jmsg // by value: one object fewer per message for the collector
	queue   []*jreq
	writing bool
	nextSeq uint64
	syncs   int // fdatasyncs done, for tests of the group commit
	// maxSize, if set, replaces segmentMaxSize (Store.SetSegmentSize).
	maxSize int64
	// removed counts the bytes of the segments collect deleted.
	removed int64
	// coming counts messages being received that will commit to the
	// journal (Create to Commit or Abort); arrived wakes a lingering
	// leader when one of them is queued.
	coming  atomic.Int64
	arrived chan struct{}
	linger  *time.Timer
	// skip reports ids that exist as files in msg/: a spilled message
	// whose done record was lost in a crash.
	skip func(id string) bool
}

func openJournal(dir string, skip func(string) bool) (*journal, error) {
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	j := &journal{dir: dir, dirSync: newDirSyncer(dir), index: map[string]jmsg{}, skip: skip, arrived: make(chan struct{}, 1)}
	j.cond = sync.NewCond(&j.mu)
	if err := j.load(); err != nil {
		return nil, err
	}
	return j, nil
}

// load reads every segment, oldest first, and indexes the live messages.
func (j *journal) load() error {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		path := filepath.Join(j.dir, e.Name())
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		seg := &segment{seq: seq, path: path, f: f}
		j.segs = append(j.segs, seg)
		j.nextSeq = max(j.nextSeq, seq+1)
	}
	slices.SortFunc(j.segs, func(a, b *segment) int { return cmp.Compare(a.seq, b.seq) })
	for _, seg := range j.segs {
		fi, err := seg.f.Stat()
		if err != nil {
			return err
		}
		seg.size = fi.Size()
		seg.unreadable = readRecords(seg.f, fi.Size(), func(typ byte, payload []byte, off int64) {
			j.apply(seg, typ, payload, off)
		})
	}
	return nil
}

// apply indexes one record read from a segment.
func (j *journal) apply(seg *segment, typ byte, payload []byte, off int64) {
	switch typ {
	case recMessage:
		id, bodyOff, ok := payloadID(payload)
		if ok {
			seg.msgs++
		}
		if _, dup := j.index[id]; !ok || dup || j.skip(id) {
			return
		}
		start := off + recordHeaderSize
		m := jmsg{seg: seg, envOff: start, bodyOff: start + bodyOff, size: int64(len(payload)) - bodyOff}
		j.index[id] = m
		seg.live++
		seg.liveCost += m.fileCost()
	case recDone:
		if m, ok := j.index[string(payload)]; ok {
			m.seg.live--
			m.seg.liveCost -= m.fileCost()
			delete(j.index, string(payload))
		}
	}
}

// readRecords calls fn for every intact record of a segment of the given
// size, in order, and returns how many bytes are in none. After a damaged
// record it resumes at the next record whose checksum verifies. The
// segment is read through a window of a few MiB, not record by record,
// and payload is only valid during fn (it is reused).
func readRecords(r io.ReaderAt, size int64, fn func(typ byte, payload []byte, off int64)) (unreadable int64) {
	var off int64
	hdr := make([]byte, recordHeaderSize)
	var scratch, payload []byte
	w := &window{r: r, size: size}
	for off < size {
		if p, ok := readRecord(w, size, off, hdr, payload); ok {
			payload = p
			fn(hdr[4], payload, off)
			off += recordHeaderSize + int64(len(payload))
			continue
		}
		if scratch == nil {
			scratch = make([]byte, 64<<10)
		}
		next := resync(r, size, off+1, scratch)
		unreadable += next - off
		off = next
	}
	return unreadable
}

// window is a ReaderAt over r that reads ahead in large pieces: reading a
// journal of hundreds of thousands of small records costs a few hundred
// system calls instead of two per record.
type window struct {
	r    io.ReaderAt
	size int64
	buf  []byte
	base int64
}

const windowSize = 4 << 20

func (w *window) ReadAt(p []byte, off int64) (int, error) {
	if off >= w.base && off+int64(len(p)) <= w.base+int64(len(w.buf)) {
		return copy(p, w.buf[off-w.base:]), nil
	}
	if len(p) > windowSize/2 {
		return w.r.ReadAt(p, off)
	}
	if w.buf == nil {
		w.buf = make([]byte, windowSize)
	}
	n, err := w.r.ReadAt(w.buf[:cap(w.buf)][:min(int64(windowSize), w.size-off)], off)
	w.buf, w.base = w.buf[:n], off
	if n < len(p) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return copy(p, w.buf), err
	}
	return copy(p, w.buf), nil
}

// recordLen checks the header of a record at off in hdr (already read)
// and returns its payload length; ok is false when the header cannot
// start a record that fits in size bytes. It bounds what a corrupt length
// field can make a reader allocate.
func recordLen(hdr []byte, off, size int64) (int64, bool) {
	if string(hdr[:4]) != recordMagic || (hdr[4] != recMessage && hdr[4] != recDone) {
		return 0, false
	}
	n := int64(binary.BigEndian.Uint32(hdr[5:9]))
	return n, n <= maxRecordPayload && n <= size-off-recordHeaderSize
}

// readRecord reads the record at off into hdr and a payload (reusing buf
// when it is large enough); ok only when it is whole and its checksum
// verifies.
func readRecord(r io.ReaderAt, size, off int64, hdr, buf []byte) ([]byte, bool) {
	if size-off < recordHeaderSize {
		return nil, false
	}
	if _, err := r.ReadAt(hdr, off); err != nil {
		return nil, false
	}
	n, ok := recordLen(hdr, off, size)
	if !ok {
		return nil, false
	}
	payload := buf[:0]
	if int64(cap(buf)) < n {
		payload = make([]byte, n)
	}
	payload = payload[:n]
	if _, err := r.ReadAt(payload, off+recordHeaderSize); err != nil {
		return nil, false
	}
	crc := crc32.Update(crc32.Checksum(hdr[4:5], castagnoli), castagnoli, payload)
	return payload, crc == binary.BigEndian.Uint32(hdr[9:13])
}

// verifyRecord reports whether a whole record whose checksum verifies
// starts at off, reading its payload through scratch rather than
// allocating it: a damaged stretch may hold many false starts.
func verifyRecord(r io.ReaderAt, size, off int64, scratch []byte) bool {
	var hdr [recordHeaderSize]byte
	if size-off < recordHeaderSize {
		return false
	}
	if _, err := r.ReadAt(hdr[:], off); err != nil {
		return false
	}
	n, ok := recordLen(hdr[:], off, size)
	if !ok {
		return false
	}
	crc := crc32.Checksum(hdr[4:5], castagnoli)
	for pos := off + recordHeaderSize; n > 0; {
		b := scratch[:min(n, int64(len(scratch)))]
		if _, err := r.ReadAt(b, pos); err != nil {
			return false
		}
		crc = crc32.Update(crc, castagnoli, b)
		pos += int64(len(b))
		n -= int64(len(b))
	}
	return crc == binary.BigEndian.Uint32(hdr[9:13])
}

// resync returns the offset of the first verifying record at or after
// from, or size when there is none.
//
// A candidate is accepted on its checksum, so a whole record written
// inside a message's body would be found too. Client data can never hold
// one: a record's length field is below 1<<24 (maxRecordPayload), so its
// first byte is NUL, and the front door refuses NUL in message data and
// envelopes (TestRecordLengthAlwaysHoldsANul pins this). Accepting binary
// bodies (BINARYMIME) would break that assumption: resync would then need
// a stronger anchor.
func resync(r io.ReaderAt, size, from int64, scratch []byte) int64 {
	buf := make([]byte, 64<<10)
	for pos := from; size-pos >= recordHeaderSize; {
		n, _ := r.ReadAt(buf[:min(int64(len(buf)), size-pos)], pos)
		if n < len(recordMagic) {
			return size // unreadable from here on
		}
		chunk := buf[:n]
		for i := 0; ; {
			k := bytes.Index(chunk[i:], []byte(recordMagic))
			if k < 0 {
				break
			}
			if c := pos + int64(i+k); verifyRecord(r, size, c, scratch) {
				return c
			}
			i += k + 1
		}
		// The next chunk overlaps this one by less than a magic, so no
		// candidate is tried twice.
		pos += int64(n - len(recordMagic) + 1)
	}
	return size
}

// payloadID returns the id of a message record's payload and where its
// body starts, without decoding the whole envelope: the encoder writes the
// id first ({"id":"…",…}), as encoding/json did for earlier versions. A
// payload in another form is decoded in full.
func payloadID(p []byte) (string, int64, bool) {
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		return "", 0, false
	}
	const prefix = `{"id":"`
	if rest, ok := bytes.CutPrefix(p[:i], []byte(prefix)); ok {
		if k := bytes.IndexByte(rest, '"'); k > 0 && validID(string(rest[:k])) && k+1 < len(rest) && rest[k+1] == ',' {
			return string(rest[:k]), int64(i + 1), true
		}
	}
	env, bodyOff, ok := decodeMessagePayload(p)
	return env.ID, bodyOff, ok
}

func decodeMessagePayload(p []byte) (Envelope, int64, bool) {
	var env Envelope
	i := bytes.IndexByte(p, '\n')
	if i < 0 || decodeEnvelope(p[:i], &env) != nil || !validID(env.ID) || len(env.Recipients) == 0 ||
		env.Size != int64(len(p)-i-1) {
		return env, 0, false
	}
	return env, int64(i + 1), true
}

func encodeRecord(typ byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	rec := make([]byte, recordHeaderSize, recordHeaderSize+n)
	copy(rec, recordMagic)
	rec[4] = typ
	binary.BigEndian.PutUint32(rec[5:9], uint32(n))
	crc := crc32.Checksum(rec[4:5], castagnoli)
	for _, p := range parts {
		rec = append(rec, p...)
		crc = crc32.Update(crc, castagnoli, p)
	}
	binary.BigEndian.PutUint32(rec[9:13], crc)
	return rec
}

// commitMessage makes a message durable in the journal.
func (j *journal) commitMessage(env Envelope, body []byte) error {
	hdr, err := encodeEnvelope(&env)
	if err != nil {
		return err
	}
	if len(hdr)+1+len(body) > maxRecordPayload { // Pending keeps bodies below journalMaxMessage
		return fmt.Errorf("spool: journal record of %d bytes exceeds the reader's limit", len(hdr)+1+len(body))
	}
	// Offsets within the record, made absolute by the writer.
	m := &jmsg{envOff: recordHeaderSize, bodyOff: recordHeaderSize + int64(len(hdr)) + 1, size: int64(len(body))}
	req := &jreq{rec: encodeRecord(recMessage, hdr, []byte{'\n'}, body), durable: true, id: env.ID, msg: m}
	return j.submit(req)
}

// done marks a message of the journal finished. It does not wait for the
// record to be durable.
func (j *journal) done(id string) {
	j.mu.Lock()
	m, ok := j.index[id]
	if !ok {
		j.mu.Unlock()
		return
	}
	delete(j.index, id)
	m.seg.live--
	m.seg.liveCost -= m.fileCost()
	j.mu.Unlock()
	j.submit(&jreq{rec: encodeRecord(recDone, []byte(id))})
	j.collect()
}

// submit queues a record and returns once it is written (and, if durable,
// synced). Whoever finds no write in progress writes everything queued so
// far in one go: the group commit.
func (j *journal) submit(req *jreq) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.writable {
		return errors.New("spool: journal not open for writing (Recover first)")
	}
	j.queue = append(j.queue, req)
	if req.durable {
		j.wake()
	}
	for !req.done {
		if j.writing {
			j.cond.Wait()
			continue
		}
		j.writing = true
		j.gather()
		batch := j.queue
		j.queue = nil
		seg, err := j.current()
		if err == nil {
			j.mu.Unlock()
			err = j.write(seg, batch)
			j.mu.Lock()
		}
		for _, b := range batch {
			if err == nil && b.msg != nil {
				b.msg.seg = seg
				j.index[b.id] = *b.msg
				seg.live++
				seg.msgs++
				seg.liveCost += b.msg.fileCost()
			}
			b.done, b.err = true, err
		}
		j.writing = false
		j.cond.Broadcast()
	}
	return req.err
}

// lingerMax bounds how long a group's leader waits for messages that are
// being received to join its fdatasync.
var lingerMax = 200 * time.Microsecond

// gather lets messages that are being received right now join the group
// about to be synced, for at most lingerMax: one fdatasync for more of
// them. Called by the leader with j.mu held; it may release it.
func (j *journal) gather() {
	var deadline time.Time
	for {
		queued := int64(0)
		for _, r := range j.queue {
			if r.durable {
				queued++
			}
		}
		if queued == 0 || j.coming.Load() <= queued {
			return
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(lingerMax)
		}
		if !now.Before(deadline) {
			return
		}
		if j.linger == nil {
			j.linger = time.NewTimer(deadline.Sub(now))
		} else {
			j.linger.Reset(deadline.Sub(now))
		}
		j.mu.Unlock()
		select {
		case <-j.arrived:
		case <-j.linger.C:
		}
		j.linger.Stop()
		j.mu.Lock()
	}
}

// wake tells a lingering leader that what it waits for has changed.
func (j *journal) wake() {
	select {
	case j.arrived <- struct{}{}:
	default:
	}
}

// segmentSize is when a new segment is started. Called with j.mu held.
func (j *journal) segmentSize() int64 {
	if j.maxSize > 0 {
		return j.maxSize
	}
	return segmentMaxSize
}

// SetSegmentSize sets the size from which the journal starts a new
// segment (64 MiB unless set); tests of compaction and collection use
// small ones.
func (s *Store) SetSegmentSize(n int64) {
	s.j.mu.Lock()
	defer s.j.mu.Unlock()
	s.j.maxSize = n
}

// current returns the segment to append to, starting a new one when there
// is none, it is full, or a write to it failed. Called with j.mu held.
func (j *journal) current() (*segment, error) {
	if j.cur != nil && !j.cur.failed && j.cur.size < j.segmentSize() {
		return j.cur, nil
	}
	seq := j.nextSeq
	path := filepath.Join(j.dir, fmt.Sprintf("%016x.seg", seq))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	// The segment's name must be durable before any record in it is
	// acknowledged.
	if err := j.dirSync.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	j.nextSeq++
	seg := &segment{seq: seq, path: path, f: f}
	j.segs = append(j.segs, seg)
	j.cur = seg
	return seg, nil
}

// write appends a batch to seg, fdatasyncs it if any record needs that,
// and records each message record's place. Only the batch's leader calls
// it, so seg.size is not written concurrently.
func (j *journal) write(seg *segment, batch []*jreq) error {
	var buf []byte
	durable := false
	for _, b := range batch {
		if b.msg != nil {
			b.msg.envOff += seg.size + int64(len(buf))
			b.msg.bodyOff += seg.size + int64(len(buf))
		}
		buf = append(buf, b.rec...)
		durable = durable || b.durable
	}
	if _, err := writeSegment(seg.f, buf, seg.size); err != nil {
		// Nothing of this batch was acknowledged. Cutting the segment back
		// to its last whole record keeps it usable, so a full disk costs a
		// failed commit and not a new segment file per attempt. If even
		// that fails, the tail may hold a torn record, after which nothing
		// could be read back: later records go to a new segment.
		if terr := seg.f.Truncate(seg.size); terr != nil {
			seg.failed = true
		}
		return fmt.Errorf("spool: journal write: %w", err)
	}
	if durable {
		if err := unix.Fdatasync(int(seg.f.Fd())); err != nil {
			// None of the batch is acknowledged: cut it off, so that it
			// does not come back at the next start either (as far as the
			// disk still obeys), and go on in a new segment.
			seg.f.Truncate(seg.size)
			seg.failed = true
			return fmt.Errorf("spool: journal sync: %w", err)
		}
		j.syncs++ // only the leader writes it
	}
	seg.size += int64(len(buf))
	return nil
}

// writeSegment appends to a segment; tests replace it to make a write fail
// the way a full disk does.
var writeSegment = (*os.File).WriteAt

// collect deletes the oldest segments while they hold no live message. In
// order only: a done record for a message of one segment can sit in a
// later one, which must therefore outlive it. A damaged segment is never
// deleted (salvage moves it aside), and nothing after it goes before it.
func (j *journal) collect() {
	j.mu.Lock()
	var gone []*segment
	for len(j.segs) > 0 && j.segs[0] != j.cur && j.segs[0].live == 0 && j.segs[0].unreadable == 0 {
		gone = append(gone, j.segs[0])
		j.removed += j.segs[0].size
		j.segs = j.segs[1:]
	}
	j.mu.Unlock()
	for _, seg := range gone {
		seg.f.Close()
		os.Remove(seg.path)
	}
}

// lookup returns a live message of the journal.
func (j *journal) lookup(id string) (*jmsg, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	m, ok := j.index[id]
	return &m, ok
}

// ids lists the live messages of the journal.
func (j *journal) ids() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]string, 0, len(j.index))
	for id := range j.index {
		out = append(out, id)
	}
	return out
}

func (j *journal) isWritable() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.writable
}

// setWritable allows appends: only the process holding the spool's lock
// (after Recover) writes; others only read.
func (j *journal) setWritable() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.writable = true
}

// Spill moves a message out of the journal into a file of its own in
// msg/, for a message that will wait (a retry, a hold): segments are meant
// to be short-lived, and one long-waiting message would keep its segment
// and every later one on disk. The file is durable before the journal
// copy is marked done; should a crash come between the two, the file wins
// at the next start.
//
// The caller must have the message to itself: no delivery may be reading
// it from its segment, which goes once the message is moved out.
func (s *Store) Spill(id string) error {
	_, err := s.spill(id)
	return err
}

// spill is Spill, and reports whether the message was in the journal.
func (s *Store) spill(id string) (bool, error) {
	m, ok := s.j.lookup(id)
	if !ok {
		return false, nil
	}
	env, err := m.envelope(id)
	if err != nil {
		return false, err
	}
	p := &Pending{store: s, env: env, off: int64(len(magic))}
	if err := p.toFile(); err != nil {
		return false, err
	}
	if _, err := io.Copy(p, io.NewSectionReader(m.seg.f, m.bodyOff, m.size)); err != nil {
		p.Abort()
		return false, fmt.Errorf("spool: spill %s: %w", id, err)
	}
	if err := p.Commit(); err != nil {
		return false, err
	}
	if spillCommitted != nil {
		spillCommitted(id)
	}
	s.j.done(id)
	return true, nil
}

// spillCommitted, if set, is called between a spilled message's file
// commit and its done record (tests stop the world there, as a crash
// would).
var spillCommitted func(id string)
