package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"tlsrelay/relay/durable"
)

// RecipientStatus is where one recipient of a message stands.
type RecipientStatus string

// The states of a recipient. Pending recipients are retried; the others
// are final.
const (
	StatusPending   RecipientStatus = "pending"
	StatusDelivered RecipientStatus = "delivered"
	StatusFailed    RecipientStatus = "failed"
)

// Recipient is the delivery record of one recipient.
type Recipient struct {
	Addr        string          `json:"addr"`
	Status      RecipientStatus `json:"status"`
	Destination string          `json:"destination,omitempty"`
	// Class and Reason describe the latest failure (policy.Class names).
	Class  string `json:"class,omitempty"`
	Reason string `json:"reason,omitempty"`
	Fix    string `json:"fix,omitempty"`
	// Expired is set when the recipient failed because max_age passed.
	Expired bool `json:"expired,omitempty"`
	// Reply is the upstream's final reply, for DSNs and logs.
	Reply string    `json:"reply,omitempty"`
	When  time.Time `json:"when,omitzero"`
}

// Attempt is one delivery attempt, kept for `queue show`.
type Attempt struct {
	At          time.Time `json:"at"`
	Destination string    `json:"destination"`
	Upstream    string    `json:"upstream"`
	Result      string    `json:"result"` // "delivered" or a failure class
	Detail      string    `json:"detail,omitempty"`
}

// maxAttemptsKept bounds the attempt history of a message that has been
// retried for days.
const maxAttemptsKept = 20

// State is the delivery state of a message. A message without a state
// file has never been attempted: all its recipients are pending.
type State struct {
	Recipients  []Recipient `json:"recipients"`
	Attempts    int         `json:"attempts"`
	NextAttempt time.Time   `json:"next_attempt,omitzero"`
	History     []Attempt   `json:"history,omitempty"`
	// DelayNotified is set once a "delayed" DSN went to the sender.
	DelayNotified bool `json:"delay_notified,omitempty"`
	// Held messages are never attempted until released (tlsrelay queue hold).
	Held bool `json:"held,omitempty"`
}

// AddAttempt records an attempt, keeping the newest few.
func (st *State) AddAttempt(a Attempt) {
	st.History = append(st.History, a)
	if len(st.History) > maxAttemptsKept {
		st.History = st.History[len(st.History)-maxAttemptsKept:]
	}
}

// NewState returns the state of a message never attempted.
func NewState(env Envelope) State {
	st := State{}
	for _, r := range env.Recipients {
		st.Recipients = append(st.Recipients, Recipient{Addr: r, Status: StatusPending})
	}
	return st
}

// LoadState reads the state of message env, or returns a fresh one.
func (s *Store) LoadState(env Envelope) (State, error) {
	if !s.hasState(env.ID) {
		return NewState(env), nil
	}
	raw, err := os.ReadFile(filepath.Join(s.stateDir, env.ID))
	if errors.Is(err, fs.ErrNotExist) {
		return NewState(env), nil
	}
	if err != nil {
		return State{}, err
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil || len(st.Recipients) != len(env.Recipients) {
		// A state file is only ever replaced atomically, so this is damage
		// from outside. Retrying everyone may duplicate, but loses nothing.
		return NewState(env), fmt.Errorf("spool: state of %s unreadable, starting over: %v", env.ID, err)
	}
	return st, nil
}

// SaveState atomically replaces the state of message id.
func (s *Store) SaveState(id string, st State) error {
	if !validID(id) {
		return fmt.Errorf("spool: invalid id %q", id)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(filepath.Join(s.stateDir, id), raw, 0o600); err != nil {
		return err
	}
	s.setHasState(id, true)
	return nil
}
