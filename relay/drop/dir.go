package drop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Sub-directories of the drop directory, private to the relay.
const (
	importingDir = "importing" // claimed by the importer, not yet accepted
	refusedDir   = "refused"   // refused for good by the front door, kept for the operator
)

// DirMode is the drop directory's mode as the relay creates it: setgid
// (new files get the relay's group, through which it reads them), sticky
// (no one may remove or rename another's file) and writable, but not
// listable, by everyone (so local programs running as any user can drop,
// and no one can see what others dropped).
const DirMode = os.ModeSetgid | os.ModeSticky | 0o733

// DirError says why a directory cannot serve as the drop directory.
type DirError struct {
	Dir string
	Msg string
}

func (e *DirError) Error() string { return "drop directory " + e.Dir + ": " + e.Msg }

// PrepareDir creates the drop directory if it is missing (mode DirMode)
// and checks that it is safe to import from: a real directory (not a
// symbolic link) owned by this process's user, and sticky whenever others
// may write to it, so no user can remove or replace another's message.
// It creates the relay's private sub-directories.
func PrepareDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err == nil {
		if err := os.Chmod(dir, DirMode); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrExist) {
		return &DirError{Dir: dir, Msg: fmt.Sprintf("cannot create it: %v", err)}
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return &DirError{Dir: dir, Msg: err.Error()}
	}
	if !fi.IsDir() {
		return &DirError{Dir: dir, Msg: "not a directory (a symbolic link is not accepted either)"}
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != os.Geteuid() {
		return &DirError{Dir: dir, Msg: fmt.Sprintf("owned by uid %d, not by the relay's user (uid %d): the relay must own it to take files out of it; run chown", st.Uid, os.Geteuid())}
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return &DirError{Dir: dir, Msg: fmt.Sprintf("writable by others without the sticky bit (mode %v): anyone could remove or replace another user's message; run chmod 3733 %s", fi.Mode(), dir)}
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&os.ModeSetgid == 0 && os.Geteuid() != 0 {
		return &DirError{Dir: dir, Msg: fmt.Sprintf("writable by others without the setgid bit (mode %v): a file another user drops would get that user's group, which the relay cannot read; run chgrp to the relay's group and chmod 3733 %s", fi.Mode(), dir)}
	}
	for _, sub := range []string{importingDir, refusedDir} {
		p := filepath.Join(dir, sub)
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return &DirError{Dir: dir, Msg: err.Error()}
		}
		sfi, err := os.Lstat(p)
		if err != nil {
			return &DirError{Dir: dir, Msg: err.Error()}
		}
		if !sfi.IsDir() || int(sfi.Sys().(*syscall.Stat_t).Uid) != os.Geteuid() {
			return &DirError{Dir: dir, Msg: p + " is not a directory of the relay's user; remove it"}
		}
		if sfi.Mode().Perm() != 0o700 {
			if err := os.Chmod(p, 0o700); err != nil {
				return &DirError{Dir: dir, Msg: err.Error()}
			}
		}
	}
	return nil
}
