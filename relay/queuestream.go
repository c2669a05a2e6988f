package relay

import (
	"bufio"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// OpList asks a running relay for the queue listing: it answers with a
// gob stream of listItems, one per message as it reads the spool, and a
// last one that ends it. The command that asks holds one entry at a time.
// (gob rather than JSON lines: decoding is the listing command's main
// cost, and gob's is several times cheaper.)
const OpList = "list"

// listItem is one message of a streamed listing, or its end; Error says
// why it stopped early.
type listItem struct {
	Entry *QueueEntry
	End   bool
	Error string
}

// streamList writes the listing of the queue to c.
func (r *Relay) streamList(c net.Conn) {
	bw := bufio.NewWriterSize(c, 64<<10)
	enc := gob.NewEncoder(bw)
	now := r.now()
	err := WalkQueue(r.store, now, func(e QueueEntry) error {
		e.WaitingFor = r.queue.parkedWith(e.ID)
		c.SetWriteDeadline(time.Now().Add(time.Minute)) // a reader that stops reading does not hold this forever
		return enc.Encode(listItem{Entry: &e})
	})
	end := listItem{End: true}
	if err != nil {
		end.Error = err.Error()
	}
	enc.Encode(end)
	bw.Flush()
}

// parkedWith returns the suspended destination whose cohort message id
// waits with, or "".
func (q *queue) parkedWith(id string) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if it := q.items[id]; it != nil {
		return it.parked
	}
	return ""
}

// StreamQueue has the relay running on spoolDir list its queue, calling fn
// with each message as it arrives. It returns ErrNoRelay when no relay
// runs, so that the caller can read the spool itself.
func StreamQueue(spoolDir string, fn func(QueueEntry) error) error {
	c, err := net.DialTimeout("unix", ControlSocket(spoolDir), 5*time.Second)
	if err != nil {
		return ErrNoRelay
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(ControlRequest{Op: OpList}); err != nil {
		return err
	}
	dec := gob.NewDecoder(bufio.NewReaderSize(c, 64<<10))
	for {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		var item listItem
		if err := dec.Decode(&item); err != nil {
			return fmt.Errorf("the relay's listing broke off: %w", err)
		}
		if item.End {
			if item.Error != "" {
				return errors.New("the relay could not list the queue: " + item.Error)
			}
			return nil
		}
		if item.Entry == nil {
			return errors.New("the relay's listing holds an empty entry")
		}
		e := item.Entry
		// gob leaves out empty lists; the listing shows them as [].
		for _, l := range []*[]string{&e.Pending, &e.Delivered, &e.Failed} {
			if *l == nil {
				*l = []string{}
			}
		}
		if e.Recipients == nil {
			e.Recipients = []RecipientEntry{}
		}
		if err := fn(*e); err != nil {
			return err
		}
	}
}
