// Package atomicfile replaces a file's content so that a reader, even
// after a crash or kill -9 at any moment, sees the old content or the new
// one whole, never a mix or nothing.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path's content with data, mode 0600: it writes a
// temporary file in the same directory, fsyncs it, renames it over path
// and fsyncs the directory. It returns only once the new content is
// durable.
func Write(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err = f.Chmod(0o600); err == nil {
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
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
