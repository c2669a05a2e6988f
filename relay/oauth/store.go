package oauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// ReadRefreshToken reads the refresh token kept in path (one line).
func ReadRefreshToken(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	rt := strings.TrimSpace(string(raw))
	if rt == "" {
		return "", errors.New(path + " is empty")
	}
	return rt, nil
}

// WriteRefreshToken replaces the refresh token in path so that a crash at
// any moment leaves the old token or the new one, whole: it writes a
// temporary file (mode 0600), fsyncs it, renames it over path and fsyncs
// the directory. It returns only once the new token is durable.
func WriteRefreshToken(path, token string) error {
	return writeFileAtomic(path, []byte(token+"\n"))
}

// writeFileAtomic writes data to path with mode 0600: a reader sees the
// old content or the new, never a mix, even after a crash.
func writeFileAtomic(path string, data []byte) error {
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
