package oauth

import (
	"errors"
	"os"
	"strings"

	"tlsrelay/relay/durable"
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
	return durable.WriteFile(path, []byte(token+"\n"), 0o600)
}
