package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"tlsrelay/relay/dnsx"
)

// Sending's bounds.
const (
	// MaxDaysBack: at start, the reports of this many days before today
	// that were not sent are sent; older ones are left alone.
	MaxDaysBack = 7
	// GiveUpAfter: a report not delivered this long after its day ended
	// is given up (RFC 8460 §5.3 leaves retries to the submitter).
	GiveUpAfter = 3 * 24 * time.Hour
	// retryMin and retryMax bound the backoff between two tries.
	retryMin = 5 * time.Minute
	retryMax = 6 * time.Hour
	// sendDelay is how long after midnight UTC a day's reports are sent:
	// the last sessions of the day are written by then.
	sendDelay = time.Minute
)

// QueueFunc puts a report mail into the relay's queue from the envelope
// sender from ("" for <>) to rcpt. It returns a *SkipError when the
// mail cannot go (no destination takes rcpt, no DKIM key): the rua is
// then not tried again.
type QueueFunc func(from, rcpt string, msg []byte) error

// SkipError is a report that cannot be sent to a rua, and will not be
// tried again.
type SkipError struct {
	Reason string
}

func (e *SkipError) Error() string { return e.Reason }

// Sender sends each day's reports to the rua of their policy domains
// (RFC 8460 §3), after the UTC day ends, keeping a Ledger per report.
type Sender struct {
	// Dir is the reports' directory (the Store's).
	Dir string
	// Resolver finds the TLS-RPT records.
	Resolver dnsx.Resolver
	// Poster sends to https: ruas.
	Poster *Poster
	// Queue puts report mail for mailto: ruas into the relay's queue.
	Queue QueueFunc
	// From is the report mail's author mailbox; MailFrom its envelope
	// sender ("" for <>).
	From, MailFrom string
	// Org and Contact are the reports' organization-name and
	// contact-info (RFC 8460 §4.4).
	Org, Contact string
	// Flush writes the reports counted so far (the Store's Flush), before
	// a day's reports are read.
	Flush func() error
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	Log *slog.Logger
	// Sent, if set, is told of each try: transport ("https" or "mailto")
	// and result (delivered, queued, skipped, gave-up, or failed when it
	// is tried again).
	Sent func(transport, result string)

	mu sync.Mutex // one pass at a time
	// memo is the ledger of each report as this process last made it
	// (by ledger path): when a ledger cannot be written (a full disk), the
	// next pass goes on from here, so a rua that took the report is not
	// sent it again, nor are backoffs lost.
	memo map[string]*Ledger
}

func (s *Sender) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Run sends what is due now and then after each UTC midnight and at each
// retry, until ctx ends.
func (s *Sender) Run(ctx context.Context) {
	for {
		next := s.Pass(ctx)
		now := s.now()
		midnight := now.UTC().Truncate(24 * time.Hour).Add(24*time.Hour + sendDelay)
		if next.IsZero() || next.After(midnight) {
			next = midnight
		}
		wait := max(next.Sub(now), time.Second)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Pass does one round: for every report of a past day (at most
// MaxDaysBack back) not done, it looks up the domain's record and sends
// to each rua that is due. It returns when something is due next (zero:
// nothing pending).
func (s *Sender) Pass(ctx context.Context) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	today := now.Format(time.DateOnly)
	oldest := now.AddDate(0, 0, -MaxDaysBack).Format(time.DateOnly)
	if s.Flush != nil {
		if err := s.Flush(); err != nil {
			s.Log.Warn("cannot write the TLS-RPT reports before sending them", "error", err)
		}
	}
	list, err := listDays(s.Dir, oldest, today)
	if err != nil {
		s.Log.Warn("cannot list the TLS-RPT reports to send", "error", err)
		return now.Add(retryMin)
	}
	var next time.Time
	for _, e := range list {
		if ctx.Err() != nil {
			break
		}
		n := s.sendOne(ctx, e, now)
		if !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next
}

// backoff is the wait after the n-th failed try.
func backoff(n int) time.Duration {
	d := retryMin
	for i := 1; i < n && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// sendOne works on one report; it returns when it is due next.
func (s *Sender) sendOne(ctx context.Context, e Entry, now time.Time) time.Time {
	log := s.Log.With("domain", e.Domain, "day", e.Day)
	key := LedgerPath(s.Dir, e.Day, e.Domain)
	l, memoized := s.memo[key]
	if !memoized {
		var err error
		if l, err = ReadLedger(s.Dir, e.Day, e.Domain); err != nil {
			log.Warn("cannot read the TLS-RPT send ledger; the report is not sent until it can be", "error", err)
			return time.Time{}
		}
	}
	// save writes the ledger. When it cannot, the report is left for a
	// later pass, which goes on from the memo: nothing is sent twice
	// because a ledger could not be written.
	save := func() bool {
		if err := writeLedger(s.Dir, l); err != nil {
			if s.memo == nil {
				s.memo = map[string]*Ledger{}
			}
			s.memo[key] = l
			log.Warn("cannot write the TLS-RPT send ledger; the report waits until it can be written", "error", err)
			return false
		}
		delete(s.memo, key)
		return true
	}
	if l.Done() {
		if memoized && !save() {
			return now.Add(retryMin)
		}
		return time.Time{}
	}
	dayStart, _ := time.Parse(time.DateOnly, e.Day)
	giveUp := now.After(dayStart.Add(24*time.Hour + GiveUpAfter))
	if !l.Looked {
		if now.Before(l.Next) {
			return l.Next
		}
		rec, err := LookupRecord(ctx, s.Resolver, e.Domain)
		var re *RecordError
		switch {
		case errors.Is(err, ErrNoRecord):
			l.Result, l.Error = NoRecord, ""
			log.Info("TLS-RPT report not sent: the domain publishes no TLS-RPT record")
		case errors.As(err, &re):
			l.Result, l.Error = NoRecord, err.Error()
			log.Warn("TLS-RPT report not sent: the domain's TLS-RPT record is not usable", "error", err)
		case err != nil && giveUp:
			l.Result, l.Error = GaveUp, err.Error()
			log.Warn("TLS-RPT report given up: the domain's TLS-RPT record could not be looked up", "error", err)
		case err != nil:
			l.Attempts++
			l.Error, l.Next = err.Error(), now.Add(backoff(l.Attempts))
			log.Info("cannot look up the TLS-RPT record; trying again later", "error", err, "next", l.Next)
		default:
			l.Looked, l.Error, l.Attempts, l.Next = true, "", 0, time.Time{}
			for _, r := range rec.RUAs {
				l.RUAs = append(l.RUAs, RUAState{URI: r.URI, Result: Pending})
			}
		}
		if !save() {
			return now.Add(retryMin)
		}
		if !l.Looked {
			return l.Next
		}
	}
	var report *Report
	var gz []byte
	var next time.Time
	for i := range l.RUAs {
		st := &l.RUAs[i]
		if st.Result != Pending {
			continue
		}
		if now.Before(st.Next) {
			if next.IsZero() || st.Next.Before(next) {
				next = st.Next
			}
			continue
		}
		rua, err := parseRUA(st.URI)
		if err != nil || rua == nil {
			st.Result, st.Error = Skipped, fmt.Sprintf("not a usable rua: %v", err)
			if !save() {
				return now.Add(retryMin)
			}
			continue
		}
		transport := "https"
		if rua.Mailto != "" {
			transport = "mailto"
		}
		if report == nil {
			if report, gz, err = s.load(e); err != nil {
				log.Warn("cannot read the TLS-RPT report to send", "error", err)
				return now.Add(retryMin)
			}
		}
		st.Attempts++
		st.Last = now
		var skip *SkipError
		if transport == "https" {
			err = s.Poster.Post(ctx, *rua, gz)
		} else {
			m := &Mail{From: s.From, To: rua.Mailto, PolicyDomain: e.Domain, Report: report, Gz: gz}
			err = s.Queue(s.MailFrom, rua.Mailto, m.Build(now))
		}
		switch {
		case err == nil && transport == "https":
			st.Result, st.Error, st.Next = Delivered, "", time.Time{}
		case err == nil:
			st.Result, st.Error, st.Next = Queued, "", time.Time{}
		case errors.As(err, &skip):
			st.Result, st.Error = Skipped, err.Error()
		case giveUp:
			st.Result, st.Error = GaveUp, err.Error()
		default:
			st.Error, st.Next = err.Error(), now.Add(backoff(st.Attempts))
		}
		saved := save()
		attrs := []any{"rua", st.URI, "result", st.Result, "attempts", st.Attempts}
		result := st.Result
		switch st.Result {
		case Pending:
			result = "failed"
			log.Info("TLS-RPT report not sent; trying again later", append(attrs, "error", st.Error, "next", st.Next)...)
			if next.IsZero() || st.Next.Before(next) {
				next = st.Next
			}
		case GaveUp, Skipped:
			log.Warn("TLS-RPT report not sent", append(attrs, "error", st.Error)...)
		default:
			log.Info("TLS-RPT report sent", attrs...)
		}
		if s.Sent != nil {
			s.Sent(transport, result)
		}
		if !saved {
			return now.Add(retryMin)
		}
	}
	return next
}

// listDays lists the reports of the days from oldest up to (not
// including) today, without reading them: what a pass works on. A report
// or ledger that cannot be read is the concern of that report alone.
func listDays(dir, oldest, today string) ([]Entry, error) {
	days, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, d := range days {
		day := d.Name()
		if _, err := time.Parse(time.DateOnly, day); err != nil || !d.IsDir() || day < oldest || day >= today {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, day))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			dom, ok := strings.CutSuffix(f.Name(), ".json")
			if !ok || strings.HasPrefix(dom, ".") {
				continue
			}
			out = append(out, Entry{Day: day, Domain: dom, Path: filepath.Join(dir, day, f.Name())})
		}
	}
	return out, nil
}

// load reads a report for sending: organization-name and contact-info
// are the Sender's, and the JSON is gzip'ed.
func (s *Sender) load(e Entry) (*Report, []byte, error) {
	r, err := readReport(e.Path)
	if err != nil {
		return nil, nil, err
	}
	if s.Org != "" {
		r.OrganizationName = s.Org
	}
	if s.Contact != "" {
		r.ContactInfo = s.Contact
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return nil, nil, err
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	return r, b.Bytes(), nil
}
