package drop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tlsrelay/relay/durable"
)

// Importer hands every message in a drop directory to the relay's front
// door over SMTP, so it meets every rule a message from an SMTP client
// meets (allowed networks, size, line discipline, routing, never an open
// relay). A file is removed only after the relay answered 250 to it.
//
// Exactly once: a message is first claimed, renamed into importing/ under
// a name of the importer's own, and submitted with that name in its HELO,
// which the spool keeps in the message's envelope. Before a claimed file
// is submitted again — its last submission broke, or a previous run of
// the relay claimed it — the importer asks the relay (Queued) which
// recipients it already took under that HELO, and does not submit to
// them again. One duplicate remains possible: when a previous run of the
// relay delivered the message and removed it from its spool, or delivered
// it in reject mode, and was then killed before the file was removed.
type Importer struct {
	// Dir is the drop directory, prepared by PrepareDir.
	Dir string
	// Addr is the relay's front door (see DialAddr).
	Addr string
	// MaxAge is how long a message may wait for the relay to take it
	// before it is refused for good (the queue's max_age).
	MaxAge time.Duration
	// Interval is the time between two looks at the directory.
	Interval time.Duration
	Log      *slog.Logger
	// Queued returns the recipients the relay already took from sessions
	// that said helo (relay.Relay.DropTaken). It is asked before every
	// submission of a claimed file but the first one of a file this
	// Importer claimed itself; an error keeps the file for the next try.
	Queued func(helo string) ([]string, error)

	// sure holds the claimed files never submitted yet: the relay cannot
	// have them.
	sure map[string]bool
}

// Run imports until ctx ends: at once, then every Interval, backing off
// up to a minute while the relay refuses to take messages now.
func (im *Importer) Run(ctx context.Context) {
	wait := im.Interval
	for {
		if err := im.Once(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			im.Log.Warn("drop directory: the relay cannot take the dropped messages now; trying again", "dir", im.Dir, "in", wait.String(), "error", err)
			wait = min(2*wait, time.Minute)
		} else {
			wait = im.Interval
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Once claims the new messages of the drop directory and imports every
// claimed one; it stops at the first that the relay cannot take now.
func (im *Importer) Once(ctx context.Context) error {
	if im.sure == nil {
		im.sure = map[string]bool{}
	}
	if err := im.claim(); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(im.Dir, importingDir))
	if err != nil {
		return err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.SortFunc(names, func(a, b string) int { return strings.Compare(claimTime(a), claimTime(b)) })
	for _, name := range names {
		if err := im.importOne(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// staleTmp is the age after which a tmp. file is taken to be the remains
// of a sendmail that died while writing.
const staleTmp = time.Hour

// claim moves each complete message into importing/, under a name that
// records the owner's uid and the moment of the claim.
func (im *Importer) claim() error {
	entries, err := os.ReadDir(im.Dir)
	if err != nil {
		return err
	}
	claimed := 0
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(im.Dir, name)
		fi, err := os.Lstat(path)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(name, msgPrefix):
			uid := fi.Sys().(*syscall.Stat_t).Uid
			to := fmt.Sprintf("u%d-%s", uid, newName())
			if err := os.Rename(path, filepath.Join(im.Dir, importingDir, to)); err != nil {
				return err
			}
			im.sure[to] = true
			claimed++
		case strings.HasPrefix(name, tmpPrefix) && time.Since(fi.ModTime()) > staleTmp:
			os.Remove(path)
		}
	}
	if claimed > 0 {
		if err := durable.SyncDir(filepath.Join(im.Dir, importingDir)); err != nil {
			return err
		}
		return durable.SyncDir(im.Dir)
	}
	return nil
}

// claimTime is the claim's nanosecond time in a claimed name
// "u<uid>-<nanoseconds>.<random>", as a sortable string.
func claimTime(name string) string {
	_, rest, _ := strings.Cut(name, "-")
	ns, _, _ := strings.Cut(rest, ".")
	return fmt.Sprintf("%020s", ns)
}

// importOne submits one claimed file; an error means the relay cannot
// take it now and the file stays.
func (im *Importer) importOne(ctx context.Context, name string) error {
	path := filepath.Join(im.Dir, importingDir, name)
	// importing/ is the relay's alone: what is there now stays. Nothing
	// but a regular file is opened (opening a device can have effects).
	if li, err := os.Lstat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	} else if !li.Mode().IsRegular() {
		return im.refuse(name, int(li.Sys().(*syscall.Stat_t).Uid), "not a regular file ("+li.Mode().Type().String()+")")
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return im.refuse(name, -1, fmt.Sprintf("cannot be opened (%v); a symbolic link or a file the relay's group cannot read is not imported", err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	uid := int(st.Uid)
	if !fi.Mode().IsRegular() || st.Nlink != 1 {
		return im.refuse(name, uid, "not a regular file with a single name")
	}
	env, off, err := readEnvelope(f, fi.Size())
	if err != nil {
		return im.refuse(name, uid, err.Error())
	}
	helo := "drop-" + name
	log := im.Log.With("drop_file", name, "uid", uid, "from", env.From)
	if !im.sure[name] && im.Queued != nil {
		done, err := im.Queued(helo)
		if err != nil {
			return fmt.Errorf("cannot tell whether the relay already took %s: %w", name, err)
		}
		if len(done) > 0 {
			left := slices.DeleteFunc(slices.Clone(env.Recipients), func(r string) bool { return slices.Contains(done, r) })
			log.Info("drop directory: the relay already took this message (its submission broke after the data, or the relay stopped before the file was removed); not submitting it again to those recipients", "taken", len(done), "left", len(left))
			if len(left) == 0 {
				return im.remove(path)
			}
			env.Recipients = left
		}
	}
	if ns, err := strconv.ParseInt(strings.TrimLeft(claimTime(name), "0 "), 10, 64); err == nil && im.MaxAge > 0 && time.Since(time.Unix(0, ns)) > im.MaxAge {
		return im.refuse(name, uid, fmt.Sprintf("the relay did not take it within max_age (%s)", im.MaxAge))
	}
	size := fi.Size() - off
	// From here on the relay may take the message, whatever this
	// submission's outcome: the next one asks first.
	delete(im.sure, name)
	replies, err := Submit(ctx, im.Addr, helo, env, func() (io.Reader, error) {
		return io.NewSectionReader(f, off, size), nil
	})
	var te *TemporaryError
	var ue *UnreachableError
	switch {
	case err == nil:
		log.Info("drop directory: message imported", "rcpts", len(env.Recipients), "relay", strings.Join(replies, "; "))
		return im.remove(path)
	case errors.As(err, &ue):
		return err
	case errors.As(err, &te):
		return err
	default:
		return im.refuse(name, uid, err.Error())
	}
}

// remove deletes an imported file and makes that durable.
func (im *Importer) remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	delete(im.sure, filepath.Base(path))
	return durable.SyncDir(filepath.Dir(path))
}

// refuse moves a file the relay refused for good to refused/ and says why
// in the log: there is no local mailbox to bounce it to.
func (im *Importer) refuse(name string, uid int, why string) error {
	im.Log.Error("drop directory: message refused; moved to "+refusedDir+"/", "drop_file", name, "uid", uid, "reason", why)
	if err := os.Rename(filepath.Join(im.Dir, importingDir, name), filepath.Join(im.Dir, refusedDir, name)); err != nil {
		return err
	}
	delete(im.sure, name)
	return durable.SyncDir(filepath.Join(im.Dir, refusedDir))
}
