// Package durable writes files so that what it reports as written survives
// a crash or a power cut: a file's content is fsynced before it takes its
// name, and the directory is fsynced after, so a reader finds either the
// old content or the new, never a mix and never nothing.
//
// It serves everything tlsrelay must not forget outside the spool's own
// journal: per-message state, a rotated OAuth refresh token, a cached
// policy.
package durable

import (
	"os"
	"path/filepath"
)

// WriteFile replaces the file at path with data, created with mode perm:
// the data goes to a new temporary file in the same directory, which is
// fsynced, renamed over path, and the directory fsynced. On error the
// file at path is unchanged (and no temporary file is left behind).
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err = f.Chmod(perm); err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory, making the names created in or removed from
// it durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
