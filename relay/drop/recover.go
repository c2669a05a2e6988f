package drop

import (
	"os"
	"path/filepath"
	"strings"

	"tlsrelay/relay/spool"
)

// Leftovers reports whether a drop directory holds claimed files that a
// previous run of the relay did not finish with.
func Leftovers(dir string) bool {
	entries, err := os.ReadDir(filepath.Join(dir, importingDir))
	return err == nil && len(entries) > 0
}

// QueuedBySpool reads, once, which recipients of the messages in the
// spool at spoolDir came from the drop directory, by the HELO the importer
// said, and returns the lookup the Importer's Queued field wants. It only
// reads the spool, as `tlsrelay queue list` does.
func QueuedBySpool(spoolDir string) (func(helo string) []string, error) {
	store, err := spool.Open(spoolDir)
	if err != nil {
		return nil, err
	}
	ids, err := store.List()
	if err != nil {
		return nil, err
	}
	byHelo := map[string][]string{}
	for _, id := range ids {
		m, err := store.Open(id)
		if err != nil {
			continue
		}
		if strings.HasPrefix(m.Helo, "drop-") {
			byHelo[m.Helo] = append(byHelo[m.Helo], m.Recipients...)
		}
		m.Close()
	}
	return func(helo string) []string { return byHelo[helo] }, nil
}
