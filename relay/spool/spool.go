// Package spool stores accepted messages on disk so that nothing answered
// 250 is lost, whatever happens to the process or the machine.
//
// Layout under the spool directory (all 0700, files 0600):
//
//	journal/  small messages, committed together (see journal.go)
//	tmp/      messages being received; never delivered, emptied at start
//	msg/      committed messages: a magic line, the body, the envelope as a
//	          JSON trailer (written last, so that anything decided after the
//	          body arrived, like a DKIM signature, is part of the commit)
//	state/    per-message delivery state, rewritten atomically
//	corrupt/  files that failed to decode, and journal segments that could
//	          not be read to their end, kept for a person to look at
//
// A message larger than the journal takes (64 KiB) is committed by
// writing it to an anonymous file (O_TMPFILE;
// a named file in tmp/ where that is unsupported), fsyncing it, linking
// (or renaming) it into msg/ and fsyncing msg/. Only then is the client
// answered. A crash at any point before the link leaves no message (the
// client had no 250 and will retry; a tmp/ file is removed at the next
// start); after it, the message is recovered. Directory fsyncs are shared
// between messages committed at the same moment (group commit) without
// weakening this order.
//
// Whatever the spool commits it can read back: an envelope is at most
// MaxEnvelopeBytes encoded, and a larger one is refused at commit with an
// *EnvelopeTooLargeError before anything is acknowledged.
package spool

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tlsrelay/relay/durable"
)

// Envelope is what the client said outside the message itself.
type Envelope struct {
	ID         string    `json:"id"`
	From       string    `json:"from"` // "" for the null sender <>
	Recipients []string  `json:"rcpt"`
	Received   time.Time `json:"received"`
	Client     string    `json:"client,omitempty"` // remote address
	Helo       string    `json:"helo,omitempty"`
	// Bounce marks a delivery status notification the relay generated.
	Bounce bool `json:"bounce,omitempty"`
	// UTF8 marks a message submitted with SMTPUTF8: its addresses may be
	// non-ASCII, and it goes upstream with SMTPUTF8.
	UTF8 bool `json:"smtputf8,omitempty"`
	// RequireTLS marks a message submitted with REQUIRETLS (RFC 8689): it
	// goes only to a next hop that offers REQUIRETLS and was found
	// securely, and carries REQUIRETLS there.
	RequireTLS bool `json:"requiretls,omitempty"`
	// Prepend is header text sent before the body, e.g. a DKIM-Signature
	// computed over the body after it was received.
	Prepend string `json:"prepend,omitempty"`
	// Size is the size of the body in bytes.
	Size int64 `json:"size"`
}

// Store is a spool directory.
type Store struct {
	// noTmpfile is set once O_TMPFILE turned out unsupported.
	noTmpfile atomic.Bool
	dir       string
	msgSync   *dirSyncer
	tmpDir    string
	msgDir    string
	stateDir  string
	j         *journal
	log       *slog.Logger
	// damage lists the journal segments Recover found damaged.
	damage []SegmentDamage

	// states holds the ids that have a state file: most messages never
	// get one, and asking the file system each time costs a failed open
	// and two failed unlinks per message.
	statesMu sync.Mutex
	states   map[string]bool
}

const magic = "tlsrelay-spool 1\n"

// MaxEnvelopeBytes is the largest envelope the spool stores: the size of
// its encoding (JSON, with every address quoted and escaped), which goes
// into a journal record or a message file's trailer. The readers of both
// take exactly this much, so anything committed can be read back; a
// larger envelope is refused at commit with an *EnvelopeTooLargeError.
// The relay keeps transactions below it at RCPT (see EncodedLen). It also
// bounds what a corrupt file can make a reader allocate.
const MaxEnvelopeBytes = 4 << 20

// EnvelopeTooLargeError is returned by a commit whose envelope encodes to
// more than MaxEnvelopeBytes: nothing of the message was stored.
type EnvelopeTooLargeError struct {
	ID   string
	Size int // the encoded size
}

// Error says how large the envelope is and what the limit is.
func (e *EnvelopeTooLargeError) Error() string {
	return fmt.Sprintf("envelope of %s is %d bytes encoded, more than the spool's limit of %d (too many or too long addresses)", e.ID, e.Size, MaxEnvelopeBytes)
}

// EncodedLen returns how many bytes s takes as a value in an encoded
// envelope: quoted and escaped as JSON (the characters " \ < > & take two
// or six bytes each). A recipient address adds EncodedLen(addr)+1 (the
// separating comma) to an envelope's size.
func EncodedLen(s string) int {
	return len(appendJSONString(nil, s))
}

// encodeEnvelope encodes env, refusing one larger than MaxEnvelopeBytes.
func encodeEnvelope(env *Envelope) ([]byte, error) {
	b, err := env.appendJSON(nil)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxEnvelopeBytes {
		return nil, &EnvelopeTooLargeError{ID: env.ID, Size: len(b)}
	}
	return b, nil
}

// trailerLenSize is the size of the trailer's last line: 16 hex digits
// giving the length of the JSON envelope, and a newline.
const trailerLenSize = 17

// Open opens (creating if needed) the spool at dir. It refuses a directory
// that others may write to, since they could plant messages.
func Open(dir string) (*Store, error) {
	s := &Store{
		dir:      dir,
		tmpDir:   filepath.Join(dir, "tmp"),
		msgDir:   filepath.Join(dir, "msg"),
		stateDir: filepath.Join(dir, "state"),
		log:      slog.Default(),
	}
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("spool: %s is writable by group or others (mode %v); run chmod 700 %s", dir, fi.Mode().Perm(), dir)
	}
	for _, sub := range []string{s.tmpDir, s.msgDir, s.stateDir, filepath.Join(dir, "corrupt")} {
		if err := durable.MkdirAll(sub, 0o700); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	states, err := os.ReadDir(s.stateDir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.states = map[string]bool{}
	for _, e := range states {
		s.states[e.Name()] = true
	}
	s.msgSync = newDirSyncer(s.msgDir)
	// A journal message that also has a file in msg/ was spilled, and
	// its done record lost in a crash: the file wins. msg/ is listed once,
	// not asked about each journal message.
	var inMsg map[string]bool
	j, err := openJournal(filepath.Join(dir, "journal"), func(id string) bool {
		if inMsg == nil {
			inMsg = map[string]bool{}
			entries, _ := os.ReadDir(s.msgDir)
			for _, e := range entries {
				inMsg[e.Name()] = true
			}
		}
		return inMsg[id]
	})
	if err != nil {
		return nil, fmt.Errorf("spool: journal: %w", err)
	}
	s.j = j
	return s, nil
}

// Dir returns the spool directory.
func (s *Store) Dir() string { return s.dir }

// SetLogger sets where the spool reports what it cannot return as an
// error: a commit that succeeded although something after it failed.
// The default is slog.Default().
func (s *Store) SetLogger(l *slog.Logger) {
	if l != nil {
		s.log = l
	}
}

// NewID returns a fresh queue id: sortable by time, unique without
// coordination, and safe as a file name.
func NewID() string {
	var r [10]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	return fmt.Sprintf("%x%s", time.Now().UnixMilli(), strings.ToLower(enc.EncodeToString(r[:])))
}

// IDTime returns the time encoded at the start of an id made by NewID (to
// the millisecond); ok is false for an id of another form.
func IDTime(id string) (time.Time, bool) {
	const random = 16 // 10 random bytes in base32
	if !validID(id) || len(id) <= random {
		return time.Time{}, false
	}
	ms, err := strconv.ParseUint(id[:len(id)-random], 16, 63)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(ms)), true
}

// HasState reports whether message id has a delivery state (it was
// attempted or held); one without is pending for all its recipients.
func (s *Store) HasState(id string) bool { return s.hasState(id) }

// validID guards every path built from an id, which may come from a
// command line.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// Pending is a message being written. Write the body to it, then Commit
// or Abort.
type Pending struct {
	store *Store
	env   Envelope
	// mem holds a small body; f is only created once the body outgrows
	// the journal (or the journal is not writable).
	mem  []byte
	f    *os.File
	w    *bufio.Writer
	n    int64
	off  int64 // where the body starts
	done bool
	// coming is set while the journal counts this message among those
	// about to commit (see journal.gather).
	coming bool
	// anonymous is set for an O_TMPFILE file, which has no name until
	// Commit links it into msg/ (and vanishes by itself if we crash).
	anonymous bool
}

// Create starts a message with the given envelope. env.ID is filled in.
func (s *Store) Create(env Envelope) (*Pending, error) {
	if env.ID == "" {
		env.ID = NewID()
	}
	if !validID(env.ID) {
		return nil, fmt.Errorf("spool: invalid id %q", env.ID)
	}
	p := &Pending{store: s, env: env, off: int64(len(magic))}
	if !s.j.isWritable() {
		if err := p.toFile(); err != nil {
			return nil, err
		}
		return p, nil
	}
	p.coming = true
	s.j.coming.Add(1)
	return p, nil
}

// ForDirectDelivery marks a message that is delivered before the client
// gets its reply and never committed (reject mode): commits in progress do
// not wait for it to join their group.
func (p *Pending) ForDirectDelivery() { p.notComing() }

// notComing tells the journal this message will not (or no longer) join
// a group commit, and wakes a leader that may be waiting for it.
func (p *Pending) notComing() {
	if p.coming {
		p.coming = false
		p.store.j.coming.Add(-1)
		p.store.j.wake()
	}
}

// toFile moves the body received so far from memory to a file.
func (p *Pending) toFile() error {
	p.notComing()
	f, anon, err := p.store.createFile(p.env.ID)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	p.f, p.anonymous, p.w = f, anon, bufio.NewWriterSize(f, 64<<10)
	p.w.WriteString(magic)
	_, err = p.w.Write(p.mem)
	p.mem = nil
	return err
}

// ID returns the message's queue id.
func (p *Pending) ID() string { return p.env.ID }

// Envelope returns the message's envelope.
func (p *Pending) Envelope() Envelope {
	env := p.env
	env.Size = p.n
	return env
}

// SetPrepend sets header text to send before the body (see
// Envelope.Prepend); it becomes durable with Commit.
func (p *Pending) SetPrepend(h string) { p.env.Prepend = h }

// Write appends body bytes.
func (p *Pending) Write(b []byte) (int, error) {
	if p.f == nil {
		if len(p.mem)+len(b) <= journalMaxMessage {
			p.mem = append(p.mem, b...)
			p.n += int64(len(b))
			return len(b), nil
		}
		if err := p.toFile(); err != nil {
			return 0, err
		}
	}
	if len(b) >= directWrite {
		// A large buffer (the front door hands whole reads) goes to the
		// file as it is, without a copy through the buffer.
		if err := p.w.Flush(); err != nil {
			return 0, err
		}
		n, err := p.f.Write(b)
		p.n += int64(n)
		return n, err
	}
	n, err := p.w.Write(b)
	p.n += int64(n)
	return n, err
}

// directWrite is the size from which Write writes to the file directly.
const directWrite = 16 << 10

// Size returns the number of body bytes written.
func (p *Pending) Size() int64 { return p.n }

// WireSize is the length of what Body returns: the prepended header
// fields and the body.
func (p *Pending) WireSize() int64 { return int64(len(p.env.Prepend)) + p.n }

// Body flushes what was written and returns a reader of the body, for a
// message that is delivered at once instead of being committed.
func (p *Pending) Body() (io.Reader, error) {
	if p.f == nil {
		return io.MultiReader(strings.NewReader(p.env.Prepend), bytes.NewReader(p.mem)), nil
	}
	if err := p.w.Flush(); err != nil {
		return nil, err
	}
	return io.MultiReader(strings.NewReader(p.env.Prepend), io.NewSectionReader(p.f, p.off, p.n)), nil
}

// Commit makes the message durable: when it returns nil, the message
// survives a crash or power loss and will be found by Recover.
func (p *Pending) Commit() error {
	if p.done {
		return errors.New("spool: message already finished")
	}
	p.done = true
	p.env.Size = p.n
	if p.f == nil {
		err := p.store.j.commitMessage(p.env, p.mem)
		p.notComing()
		if err != nil {
			return fmt.Errorf("spool: commit %s: %w", p.env.ID, err)
		}
		return nil
	}
	final := filepath.Join(p.store.msgDir, p.env.ID)
	trailer, err := encodeEnvelope(&p.env)
	if err == nil {
		p.w.WriteByte('\n')
		p.w.Write(trailer)
		fmt.Fprintf(p.w, "\n%016x\n", len(trailer))
		err = p.w.Flush()
	}
	if err == nil {
		err = p.f.Sync()
	}
	if err == nil {
		err = p.publish(final)
	}
	if err != nil {
		// Not linked into msg/: nothing is left behind.
		p.f.Close()
		if !p.anonymous {
			os.Remove(p.f.Name())
		}
		return fmt.Errorf("spool: commit %s: %w", p.env.ID, err)
	}
	// Linked into msg/. The answer must match what a restart finds: the
	// message is committed exactly when its name is durable.
	if err := p.store.msgSync.Sync(); err != nil {
		// The name may or may not survive a crash; take it back. The
		// client gets a temporary error and retries, at worst causing a
		// duplicate.
		os.Remove(final)
		p.f.Close()
		return fmt.Errorf("spool: commit %s: %w", p.env.ID, err)
	}
	// Data and name are synced: the message is committed whatever close
	// says (failing here would have the client retry a message the spool
	// keeps, and deliver it twice).
	if err := closeFile(p.f); err != nil {
		p.store.log.Warn("spool: closing a committed message's file failed; the message is committed and will be delivered",
			"id", p.env.ID, "error", err)
	}
	return nil
}

// closeFile closes a message's file after its commit; tests replace it to
// make the close fail.
var closeFile = (*os.File).Close

// Abort discards the message.
func (p *Pending) Abort() {
	if p.done {
		return
	}
	p.done = true
	p.notComing()
	if p.f == nil {
		return
	}
	p.f.Close()
	if !p.anonymous {
		os.Remove(p.f.Name())
	}
}

// Message is a committed message opened for reading.
type Message struct {
	Envelope
	body    io.ReaderAt
	bodyOff int64
	file    *os.File // the message's own file; nil for one in the journal
}

// Body returns a reader of the message as it is sent: Prepend, then the
// body as received. Each call starts again, so a retried delivery re-reads
// from the beginning.
func (m *Message) Body() io.Reader {
	return io.MultiReader(strings.NewReader(m.Prepend), io.NewSectionReader(m.body, m.bodyOff, m.Size))
}

// WireSize is the length of what Body returns.
func (m *Message) WireSize() int64 { return int64(len(m.Prepend)) + m.Size }

// Close releases the message's file.
func (m *Message) Close() error {
	if m.file == nil {
		return nil
	}
	return m.file.Close()
}

// InJournal reports whether message id is in the journal (rather than in
// a file of its own).
func (s *Store) InJournal(id string) bool {
	_, ok := s.j.lookup(id)
	return ok
}

// InOpenSegment reports whether message id is in the journal segment that
// appends currently go to. Such a message costs no disk space of its own
// while it waits: that segment stays on disk anyway.
func (s *Store) InOpenSegment(id string) bool {
	s.j.mu.Lock()
	defer s.j.mu.Unlock()
	m, ok := s.j.index[id]
	return ok && m.seg == s.j.cur
}

// Open opens the committed message id.
func (s *Store) Open(id string) (*Message, error) {
	if !validID(id) {
		return nil, fmt.Errorf("spool: invalid id %q", id)
	}
	if m, ok := s.j.lookup(id); ok {
		env, err := m.envelope(id)
		if err == nil {
			return &Message{Envelope: env, body: m.seg.f, bodyOff: m.bodyOff}, nil
		}
		if s.InJournal(id) {
			return nil, fmt.Errorf("spool: %s: %w", id, err)
		}
		// Moved out of the journal while it was read (its segment may be
		// gone with it): its file has it, unless it was delivered.
	}
	f, err := os.Open(filepath.Join(s.msgDir, id))
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	env, err := Decode(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: %s: %w", id, err)
	}
	if env.ID != id {
		f.Close()
		return nil, fmt.Errorf("spool: %s: %w: trailer names id %q", id, ErrCorrupt, env.ID)
	}
	return &Message{Envelope: env, body: f, bodyOff: int64(len(magic)), file: f}, nil
}

// ErrCorrupt marks a spool file that cannot be decoded.
var ErrCorrupt = errors.New("corrupt spool file")

// Decode reads the envelope of a spool file of the given size: it checks
// the magic line, then reads the trailer from the end.
func Decode(r io.ReaderAt, size int64) (Envelope, error) {
	var env Envelope
	m := make([]byte, len(magic))
	if _, err := r.ReadAt(m, 0); err != nil || string(m) != magic {
		return env, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	if size < int64(len(magic))+1+2+trailerLenSize {
		return env, fmt.Errorf("%w: too short", ErrCorrupt)
	}
	tail := make([]byte, trailerLenSize)
	if _, err := r.ReadAt(tail, size-trailerLenSize); err != nil {
		return env, fmt.Errorf("%w: trailer: %v", ErrCorrupt, err)
	}
	n, err := strconv.ParseUint(string(tail[:16]), 16, 32)
	if err != nil || tail[16] != '\n' || n > MaxEnvelopeBytes {
		return env, fmt.Errorf("%w: trailer length", ErrCorrupt)
	}
	start := size - trailerLenSize - int64(n) - 2 // the "\n" before the JSON
	if start < int64(len(magic)) {
		return env, fmt.Errorf("%w: trailer length beyond the file", ErrCorrupt)
	}
	buf := make([]byte, n+2)
	if _, err := r.ReadAt(buf, start); err != nil || buf[0] != '\n' || buf[n+1] != '\n' {
		return env, fmt.Errorf("%w: trailer framing", ErrCorrupt)
	}
	if err := decodeEnvelope(buf[1:n+1], &env); err != nil {
		return env, fmt.Errorf("%w: envelope: %v", ErrCorrupt, err)
	}
	if !validID(env.ID) || len(env.Recipients) == 0 || env.Size != start-int64(len(magic)) {
		return env, fmt.Errorf("%w: envelope without id or recipients, or of the wrong size", ErrCorrupt)
	}
	return env, nil
}

// Remove deletes a message and its state. The message goes first: a crash
// between the two leaves a state file alone, which Recover discards,
// rather than a message without its record of who already has it.
func (s *Store) Remove(id string) error {
	if !validID(id) {
		return fmt.Errorf("spool: invalid id %q", id)
	}
	if s.InJournal(id) {
		s.j.done(id)
	} else {
		if err := os.Remove(filepath.Join(s.msgDir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		s.msgSync.Sync()
	}
	if !s.hasState(id) {
		return nil
	}
	if err := os.Remove(filepath.Join(s.stateDir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.setHasState(id, false)
	return nil
}

func (s *Store) hasState(id string) bool {
	s.statesMu.Lock()
	defer s.statesMu.Unlock()
	return s.states[id]
}

func (s *Store) setHasState(id string, has bool) {
	s.statesMu.Lock()
	defer s.statesMu.Unlock()
	if has {
		s.states[id] = true
	} else {
		delete(s.states, id)
	}
}

// Quarantine moves a message that cannot be decoded to corrupt/, so that
// it is neither delivered nor lost. A message in the journal is copied
// there as its record's payload (corrupt/<id>.record, durable first),
// then marked done: a live record nobody can deliver would otherwise
// keep its segment, and every later one, on disk for good.
func (s *Store) Quarantine(id string) error {
	if !validID(id) {
		return fmt.Errorf("spool: invalid id %q", id)
	}
	if m, ok := s.j.lookup(id); ok {
		raw := make([]byte, m.bodyOff+m.size-m.envOff)
		if _, err := m.seg.f.ReadAt(raw, m.envOff); err != nil {
			return fmt.Errorf("spool: quarantine %s: %w", id, err)
		}
		if err := durable.WriteFile(filepath.Join(s.dir, "corrupt", id+".record"), raw, 0o600); err != nil {
			return err
		}
		s.j.done(id)
		return nil
	}
	return os.Rename(filepath.Join(s.msgDir, id), filepath.Join(s.dir, "corrupt", id))
}

// Recover clears tmp/ (messages never acknowledged), saves what can be
// read of damaged journal segments and moves them to corrupt/ (reported
// by Damaged), removes state files whose message is gone, and returns the
// ids of all committed messages, oldest first.
func (s *Store) Recover() ([]string, error) {
	tmp, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return nil, err
	}
	for _, e := range tmp {
		os.Remove(filepath.Join(s.tmpDir, e.Name()))
	}
	s.j.setWritable()
	s.damage = s.salvage()
	s.j.collect()
	ids, err := s.List()
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, id := range ids {
		have[id] = true
	}
	states, err := os.ReadDir(s.stateDir)
	if err != nil {
		return nil, err
	}
	kept := map[string]bool{}
	for _, e := range states {
		if !have[strings.TrimSuffix(e.Name(), ".tmp")] || strings.HasSuffix(e.Name(), ".tmp") {
			os.Remove(filepath.Join(s.stateDir, e.Name()))
			continue
		}
		kept[e.Name()] = true
	}
	// Under the spool lock now: what is on disk is the truth from here on.
	s.statesMu.Lock()
	s.states = kept
	s.statesMu.Unlock()
	return ids, nil
}

// List returns the ids of committed messages, oldest first (ids sort by
// time).
//
// The journal is read before msg/: a message moved out of the journal
// meanwhile (Spill, compaction) has its file in msg/ before its journal
// copy is done, so it is listed either way, never missed (the drop
// importer's exactly-once check relies on that); one seen in both is
// listed once.
func (s *Store) List() ([]string, error) {
	ids := s.j.ids()
	entries, err := os.ReadDir(s.msgDir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if validID(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}
