package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// createFile opens the file a message is received into. Where the kernel
// and filesystem allow it (Linux, ext4/xfs/tmpfs/btrfs) it is an anonymous
// O_TMPFILE in msg/: it has no name until Commit links it in, so a crash
// leaves nothing behind, and committing costs one directory operation
// instead of a create in tmp/ plus a rename — measurably faster under load
// (see README, Performance). Elsewhere it is a named file in tmp/.
func (s *Store) createFile(id string) (f *os.File, anonymous bool, err error) {
	if !s.noTmpfile.Load() {
		fd, err := unix.Open(s.msgDir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return os.NewFile(uintptr(fd), filepath.Join(s.msgDir, "(receiving "+id+")")), true, nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
			return nil, false, err
		}
		s.noTmpfile.Store(true) // not supported here: use tmp/ from now on
	}
	f, err = os.OpenFile(filepath.Join(s.tmpDir, id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	return f, false, err
}

// publish gives the fsynced file its name in msg/. The caller then syncs
// the directory to make the name durable.
func (p *Pending) publish(final string) error {
	if !p.anonymous {
		return os.Rename(p.f.Name(), final)
	}
	// linkat through /proc/self/fd is the unprivileged way to name an
	// O_TMPFILE file (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH).
	err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", p.f.Fd()), unix.AT_FDCWD, final, unix.AT_SYMLINK_FOLLOW)
	if err != nil {
		return fmt.Errorf("link %s: %w", final, err)
	}
	return nil
}
