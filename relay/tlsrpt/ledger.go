package tlsrpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"tlsrelay/relay/durable"
)

// The outcomes of sending one day's report of a domain, as the ledger
// keeps them. Every outcome but Pending is final.
const (
	// Pending: not sent yet; tried again at Next.
	Pending = "pending"
	// Delivered: an https: rua answered 2xx.
	Delivered = "delivered"
	// Queued: the report mail for a mailto: rua is in the relay's queue,
	// which delivers it like any mail.
	Queued = "queued"
	// GaveUp: it kept failing until the day's reports were too old.
	GaveUp = "gave-up"
	// Skipped: it cannot be sent (no destination takes the address, no
	// DKIM key for the From domain): not tried again.
	Skipped = "skipped"
	// NoRecord: the domain publishes no usable TLS-RPT record.
	NoRecord = "no-record"
)

// Ledger is what was done with one day's report of one domain, kept
// beside it (<day>/<domain>.sent) and rewritten atomically and durably
// after each step, so that a restart neither sends again what a rua took
// nor forgets what is still to send.
type Ledger struct {
	Day    string `json:"day"`
	Domain string `json:"domain"`
	// Result is NoRecord when the domain has no usable record; "" while
	// its RUAs are being worked on.
	Result string `json:"result,omitempty"`
	// Error is why the record could not be had or used, or the last
	// failure to look it up.
	Error string `json:"error,omitempty"`
	// Looked says the record was looked up (RUAs are its URIs).
	Looked bool `json:"looked,omitempty"`
	// Next is when a failed lookup is tried again.
	Next     time.Time  `json:"next,omitzero"`
	Attempts int        `json:"attempts,omitempty"`
	RUAs     []RUAState `json:"ruas,omitempty"`
}

// RUAState is the state of the report for one rua URI.
type RUAState struct {
	URI      string    `json:"uri"`
	Result   string    `json:"result"`
	Attempts int       `json:"attempts,omitempty"`
	Last     time.Time `json:"last,omitzero"`
	Next     time.Time `json:"next,omitzero"`
	Error    string    `json:"error,omitempty"`
}

// Done reports whether nothing is left to do.
func (l *Ledger) Done() bool {
	if l.Result != "" {
		return true
	}
	if !l.Looked {
		return false
	}
	for _, r := range l.RUAs {
		if r.Result == Pending {
			return false
		}
	}
	return true
}

// LedgerPath is where the ledger of day's report of domain is kept in
// dir (the reports' directory).
func LedgerPath(dir, day, domain string) string { return filepath.Join(dir, day, domain+".sent") }

// ReadLedger reads a ledger; one that does not exist is empty.
func ReadLedger(dir, day, domain string) (*Ledger, error) {
	raw, err := os.ReadFile(LedgerPath(dir, day, domain))
	if errors.Is(err, fs.ErrNotExist) {
		return &Ledger{Day: day, Domain: domain}, nil
	}
	if err != nil {
		return nil, err
	}
	var l Ledger
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, fmt.Errorf("%s: %v", LedgerPath(dir, day, domain), err)
	}
	return &l, nil
}

// writeLedger is Ledger.write; tests replace it to make a write fail the
// way a full disk does.
var writeLedger = func(dir string, l *Ledger) error { return l.write(dir) }

// write replaces the ledger on disk (atomically, durably).
func (l *Ledger) write(dir string) error {
	raw, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(LedgerPath(dir, l.Day, l.Domain), append(raw, '\n'), 0o600)
}

// Summary says in a few words what was done: "no record", "pending",
// "gave up", or each rua's result and URI.
func (l *Ledger) Summary() string {
	switch {
	case l.Result == NoRecord:
		return "no record"
	case l.Result != "":
		return l.Result
	case !l.Looked:
		return Pending
	}
	parts := make([]string, len(l.RUAs))
	for i, r := range l.RUAs {
		parts[i] = r.Result + " " + r.URI
	}
	return strings.Join(parts, ", ")
}
