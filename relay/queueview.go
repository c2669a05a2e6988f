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
	// Recipients is where each recipient stands, in envelope order.
	Recipients []RecipientEntry `json:"recipients"`
	// WaitingFor names the suspended destination the message waits for
	// without being tried (a listing from the running relay only).
	WaitingFor string `json:"waiting_for,omitempty"`
}

// RecipientEntry is one recipient of a queued message: its status and,
// when an attempt for it failed, the latest failure.
type RecipientEntry struct {
	Addr        string                `json:"addr"`
	Status      spool.RecipientStatus `json:"status"`
	Destination string                `json:"destination,omitempty"`
	// LastClass and LastFailure are the latest failure's class (a
	// policy.Class name) and its detail; Fix is what would mend it.
	LastClass   string    `json:"last_failure_class,omitempty"`
	LastFailure string    `json:"last_failure,omitempty"`
	Fix         string    `json:"fix,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
}

// ListQueue reads the whole queue from the spool (see WalkQueue).
func ListQueue(store *spool.Store, now time.Time) ([]QueueEntry, error) {
	out := []QueueEntry{}
	err := WalkQueue(store, now, func(e QueueEntry) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// WalkQueue calls fn with each queued message, oldest first, reading one
// message's envelope and state at a time, so that a queue of any length
// is listed in little memory. It only reads, and state files are replaced
// atomically, so it is safe while a relay runs. An error from fn stops
// the walk and is returned.
func WalkQueue(store *spool.Store, now time.Time, fn func(QueueEntry) error) error {
	ids, err := store.List()
	if err != nil {
		return err
	}
	for _, id := range ids {
		msg, err := store.Open(id)
		if err != nil {
			continue // delivered or deleted since the listing
		}
		msg.Close() // the envelope is all a listing needs
		st, _ := store.LoadState(msg.Envelope)
		e := QueueEntry{ID: id, Received: msg.Received, AgeSeconds: int64(now.Sub(msg.Received).Seconds()),
			From: msg.From, Size: msg.Size, Attempts: st.Attempts, NextAttempt: st.NextAttempt, Held: st.Held, Bounce: msg.Bounce,
			Pending: []string{}, Delivered: []string{}, Failed: []string{}, Recipients: make([]RecipientEntry, 0, len(st.Recipients))}
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
			e.Recipients = append(e.Recipients, RecipientEntry{Addr: rc.Addr, Status: rc.Status, Destination: rc.Destination,
				LastClass: rc.Class, LastFailure: rc.Reason, Fix: rc.Fix, LastAttempt: rc.When})
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
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
