package relay

import (
	"slices"
	"strings"
	"sync"

	"tlsrelay/relay/spool"
)

// dropHeloPrefix starts the HELO the drop directory's importer says: it
// names the claimed file the message came from.
const dropHeloPrefix = "drop-"

// maxDropsSeen bounds how many imported messages the relay remembers
// having handled (see dropsSeen): far more than an importer has in flight
// between a broken submission and its next try.
const maxDropsSeen = 4096

// dropsSeen remembers, by HELO, the recipients of the messages from the
// drop directory that the relay handled: every recipient of a spooled
// message once it was attempted (it may be removed from the spool right
// after), and the recipients a destination in reject mode took before
// the 250. With the spool, it tells the importer whether a message whose
// submission broke was taken all the same. It lives in memory: a restart
// forgets it.
type dropsSeen struct {
	mu     sync.Mutex
	byHelo map[string][]string
	order  []string // oldest first, to forget past maxDropsSeen
}

// note records the recipients of an attempt o on env for rcpts that the
// relay took (see dropsSeen); allOrNothing is reject mode, where only
// delivered recipients count.
func (d *dropsSeen) note(env spool.Envelope, rcpts []string, o *outcome, allOrNothing bool) {
	if !strings.HasPrefix(env.Helo, dropHeloPrefix) {
		return
	}
	var took []string
	for _, rc := range rcpts {
		if !allOrNothing || o.delivered && !o.superseded && o.limited == nil && o.failureFor(rc) == nil {
			took = append(took, rc)
		}
	}
	if len(took) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byHelo == nil {
		d.byHelo = map[string][]string{}
	}
	if _, ok := d.byHelo[env.Helo]; !ok {
		if len(d.order) >= maxDropsSeen {
			delete(d.byHelo, d.order[0])
			d.order = d.order[1:]
		}
		d.order = append(d.order, env.Helo)
	}
	for _, rc := range took {
		if !slices.Contains(d.byHelo[env.Helo], rc) {
			d.byHelo[env.Helo] = append(d.byHelo[env.Helo], rc)
		}
	}
}

func (d *dropsSeen) lookup(helo string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.byHelo[helo])
}

// DropTaken returns the recipients of the messages whose session said
// helo that this relay has taken: those in its spool now (queued,
// delivered or failed), and those it delivered and removed, or delivered
// in reject mode, since it started. The drop directory's importer asks it
// before submitting a claimed file again, so that a submission that broke
// after the relay's 250 does not send the message twice. What a previous
// run delivered and removed is not known.
func (r *Relay) DropTaken(helo string) ([]string, error) {
	if !strings.HasPrefix(helo, dropHeloPrefix) {
		return nil, nil
	}
	// The spool first, then the memory: a message removed in between was
	// noted before its removal.
	ids, err := r.store.List()
	if err != nil {
		return nil, err
	}
	var taken []string
	for _, id := range ids {
		m, err := r.store.Open(id)
		if err != nil {
			continue // removed meanwhile (then noted), or quarantined
		}
		if m.Helo == helo {
			taken = append(taken, m.Recipients...)
		}
		m.Close()
	}
	for _, rc := range r.drops.lookup(helo) {
		if !slices.Contains(taken, rc) {
			taken = append(taken, rc)
		}
	}
	return taken, nil
}
