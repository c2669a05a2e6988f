package relay

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// OpList asks a running relay for the queue listing: it answers with one
// JSON QueueEntry per line, as it reads the spool, and a last line that is
// a listEnd. The command that asks holds one entry at a time.
const OpList = "list"

// listEnd ends a streamed listing; Error says why it stopped early.
type listEnd struct {
	End   bool   `json:"end"`
	Error string `json:"error,omitempty"`
}

// streamList writes the listing of the queue to c.
func (r *Relay) streamList(c net.Conn) {
	bw := bufio.NewWriterSize(c, 64<<10)
	enc := json.NewEncoder(bw)
	now := r.now()
	err := WalkQueue(r.store, now, func(e QueueEntry) error {
		e.WaitingFor = r.queue.parkedWith(e.ID)
		c.SetWriteDeadline(time.Now().Add(time.Minute)) // a reader that stops reading does not hold this forever
		return enc.Encode(e)
	})
	end := listEnd{End: true}
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
	br := bufio.NewReaderSize(c, 64<<10)
	for {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An entry longer than the buffer: read the rest of it.
			rest, err2 := br.ReadBytes('\n')
			line, err = append(append([]byte(nil), line...), rest...), err2
		}
		if err != nil {
			return fmt.Errorf("the relay's listing broke off: %w", err)
		}
		var end listEnd
		if json.Unmarshal(line, &end) == nil && end.End {
			if end.Error != "" {
				return errors.New("the relay could not list the queue: " + end.Error)
			}
			return nil
		}
		var e QueueEntry
		if err := json.Unmarshal(line, &e); err != nil {
			return fmt.Errorf("the relay's listing: %w", err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}
