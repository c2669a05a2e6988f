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
	"errors"
	"io/fs"
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
	return syncDir(dir)
}

// MkdirAll creates dir with mode perm, and whatever parents of it are
// missing, and fsyncs the parent of each directory it created once that
// directory exists: a directory made on first start is an entry in its
// parent, lost in a power cut unless the parent is synced. An existing
// dir costs a stat and nothing else.
func MkdirAll(dir string, perm os.FileMode) error {
	var created []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		_, err := os.Stat(d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(created) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, d := range created { // innermost first: each parent once its child exists
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// syncDir is SyncDir; tests replace it to see which directories are synced.
var syncDir = SyncDir

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
