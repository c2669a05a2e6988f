package relay

import (
	"io"
	"time"

	"tlsrelay/relay/dsn"
	"tlsrelay/relay/spool"
)

// QueueEntry is one queued message as `tlsrelay queue list` shows it.
type QueueEntry struct {
	ID          string    `json:"id"`
	Received    time.Time `json:"received"`
	AgeSeconds  int64     `json:"age_seconds"`
	From        string    `json:"from"`
	Size        int64     `json:"size"`
	Pending     []string  `json:"pending"`
	Delivered   []string  `json:"delivered"`
	Failed      []string  `json:"failed"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Held        bool      `json:"held"`
	LastClass   string    `json:"last_failure_class,omitempty"`
	Bounce      bool      `json:"is_bounce,omitempty"`
}

// ListQueue reads the queue from the spool. It only reads, and state files
// are replaced atomically, so it is safe while a relay runs.
func ListQueue(store *spool.Store, now time.Time) ([]QueueEntry, error) {
	ids, err := store.List()
	if err != nil {
		return nil, err
	}
	out := []QueueEntry{}
	for _, id := range ids {
		msg, err := store.Open(id)
		if err != nil {
			continue // delivered or deleted since the listing
		}
		st, _ := store.LoadState(msg.Envelope)
		msg.Close()
		e := QueueEntry{ID: id, Received: msg.Received, AgeSeconds: int64(now.Sub(msg.Received).Seconds()),
			From: msg.From, Size: msg.Size, Attempts: st.Attempts, NextAttempt: st.NextAttempt, Held: st.Held, Bounce: msg.Bounce,
			Pending: []string{}, Delivered: []string{}, Failed: []string{}}
		for _, rc := range st.Recipients {
			switch rc.Status {
			case spool.StatusDelivered:
				e.Delivered = append(e.Delivered, rc.Addr)
			case spool.StatusFailed:
				e.Failed = append(e.Failed, rc.Addr)
			default:
				e.Pending = append(e.Pending, rc.Addr)
			}
			if rc.Class != "" {
				e.LastClass = rc.Class
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// MessageView is one message as `tlsrelay queue show` shows it.
type MessageView struct {
	Envelope spool.Envelope `json:"envelope"`
	State    spool.State    `json:"state"`
	Headers  string         `json:"headers"`
	Body     string         `json:"body,omitempty"`
}

// ShowMessage reads one message: envelope, state, headers, and the whole
// message only when withBody is set.
func ShowMessage(store *spool.Store, id string, withBody bool) (*MessageView, error) {
	msg, err := store.Open(id)
	if err != nil {
		return nil, err
	}
	defer msg.Close()
	st, _ := store.LoadState(msg.Envelope)
	v := &MessageView{Envelope: msg.Envelope, State: st, Headers: string(dsn.ReadHeaders(msg.Body()))}
	v.Envelope.Prepend = ""
	if withBody {
		b, err := io.ReadAll(msg.Body())
		if err != nil {
			return nil, err
		}
		v.Body = string(b)
	}
	return v, nil
}
