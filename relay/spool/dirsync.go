package spool

import (
	"sync"

	"tlsrelay/relay/durable"
)

// dirSyncer fsyncs a directory on behalf of many callers at once. A caller
// that has just renamed a file into the directory needs an fsync that
// starts after its rename; every caller waiting when an fsync starts is
// covered by it, so under load one fsync serves a whole batch (group
// commit) and no caller returns before a sync that covers it finished.
type dirSyncer struct {
	dir string

	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	started uint64 // generations started
	done    uint64 // generations finished
	failed  uint64 // the latest generation whose fsync failed
	lastErr error
}

func newDirSyncer(dir string) *dirSyncer {
	d := &dirSyncer{dir: dir}
	d.cond = sync.NewCond(&d.mu)
	return d
}

// Sync returns once an fsync of the directory that began after the call
// has completed.
func (d *dirSyncer) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := d.started + 1 // a sync already running may predate our rename
	for d.done < want {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		d.started++
		gen := d.started
		d.mu.Unlock()
		err := syncDir(d.dir)
		d.mu.Lock()
		d.running = false
		d.done = gen
		if err != nil {
			d.failed, d.lastErr = gen, err
		}
		d.cond.Broadcast()
	}
	if d.failed >= want {
		return d.lastErr
	}
	return nil
}

// syncDir fsyncs a directory, making the names created in or removed
// from it durable; tests replace it to see which directories are synced.
var syncDir = durable.SyncDir
