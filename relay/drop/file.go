// Package drop is the maildrop: the directory where `tlsrelay sendmail`
// leaves a message when the relay cannot take it now, and the importer
// that hands each such message to the relay's own front door once it can,
// so that a message from a local user is checked exactly as one that came
// over SMTP. It also holds the SMTP submission both of them use.
//
// A drop file is one line of JSON (the envelope) and the message as it
// goes over SMTP, lines ending in CRLF. It is written under a "tmp." name,
// made durable (fsync of the file and of the directory) and only then
// renamed to its "msg." name, which is what the importer looks for.
package drop

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tlsrelay/relay/durable"
)

// Envelope is what SMTP's MAIL and RCPT carry for one dropped message.
type Envelope struct {
	From       string   `json:"from"` // "" for the null sender <>
	Recipients []string `json:"rcpt"`
	// EightBit asks for BODY=8BITMIME (sendmail's -B8BITMIME).
	EightBit bool `json:"8bitmime,omitempty"`
}

// Name prefixes in the drop directory.
const (
	tmpPrefix = "tmp." // being written by sendmail
	msgPrefix = "msg." // complete and durable: the importer takes it
)

// maxEnvelopeLine bounds the JSON line of a drop file.
const maxEnvelopeLine = 1 << 20

// FileMode is the mode of a drop file: readable by the relay through the
// drop directory's group (the directory is setgid, so a new file gets its
// group), by no one else.
const FileMode = 0o640

// ErrTooLarge means a drop file's envelope line is over its bound.
var ErrTooLarge = errors.New("drop: envelope line too long")

// Write stores a message in the drop directory dir and makes it durable
// before returning its name: the file is created anew (O_EXCL, never
// following a symbolic link), written, fsynced, renamed from its tmp.
// name to its msg. name, and the directory fsynced (or, for a caller who
// may not open the directory, its file system synced).
func Write(dir string, env Envelope, msg []byte) (string, error) {
	id := newName()
	tmp := filepath.Join(dir, tmpPrefix+id)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, FileMode)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The umask may have taken the group's read bit: the relay reads the
	// file through the group.
	if err := f.Chmod(FileMode); err != nil {
		return "", err
	}
	head, err := json.Marshal(env)
	if err != nil {
		return "", err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	w.Write(head)
	w.WriteByte('\n')
	w.Write(msg)
	if err := w.Flush(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	final := filepath.Join(dir, msgPrefix+id)
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	ok = true
	defer f.Close()
	// The new name must be durable too. The drop directory cannot be
	// opened by other users (it is not listable), so when its fsync is
	// not allowed, the file system holding it is synced (syncfs) instead.
	if err := durable.SyncDir(dir); err != nil {
		if !errors.Is(err, os.ErrPermission) {
			return "", err
		}
		if err := unix.Syncfs(int(f.Fd())); err != nil {
			return "", fmt.Errorf("drop: syncfs: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return final, nil
}

// newName returns a name no one can guess: others may create files in the
// drop directory, and must not be able to predict, take or read ours.
func newName() string {
	var b [16]byte
	rand.Read(b[:])
	return strconv.FormatInt(time.Now().UnixNano(), 10) + "." + hex.EncodeToString(b[:])
}

// readEnvelope reads the envelope line of a drop file and returns it with
// the offset where the message starts.
func readEnvelope(f io.ReaderAt, size int64) (Envelope, int64, error) {
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, min(size, maxEnvelopeLine+1)), 64<<10)
	line, err := r.ReadSlice('\n')
	for errors.Is(err, bufio.ErrBufferFull) {
		var more []byte
		more, err = r.ReadSlice('\n')
		line = append(append([]byte(nil), line...), more...)
	}
	if err != nil {
		if len(line) > maxEnvelopeLine || errors.Is(err, io.EOF) && size > maxEnvelopeLine {
			return Envelope{}, 0, ErrTooLarge
		}
		return Envelope{}, 0, fmt.Errorf("drop: no envelope line: %w", err)
	}
	var env Envelope
	if err := json.Unmarshal(line, &env); err != nil {
		return Envelope{}, 0, fmt.Errorf("drop: envelope: %w", err)
	}
	if len(env.Recipients) == 0 {
		return Envelope{}, 0, errors.New("drop: envelope has no recipient")
	}
	return env, int64(len(line)), nil
}
