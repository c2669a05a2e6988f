// Package tlsrpt keeps SMTP TLS Reporting (RFC 8460) aggregate reports:
// every session of MX delivery is counted, as a success or a failure with
// its result type, in one report per policy domain and UTC day, kept in
// memory and written to disk (atomically, now and then: see Store) as RFC
// 8460 JSON. With sending on, a Sender sends each past day's reports to
// the domains' rua (https: and mailto:), keeping a Ledger of what it did.
package tlsrpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/durable"
)

// PolicyType is the kind of policy a session was judged under.
type PolicyType string

// The policy types of RFC 8460 §4.4.
const (
	TLSA          PolicyType = "tlsa"
	STS           PolicyType = "sts"
	NoPolicyFound PolicyType = "no-policy-found"
)

// Report is one aggregate report, as RFC 8460 §4.4 defines its JSON.
type Report struct {
	OrganizationName string      `json:"organization-name"`
	DateRange        DateRange   `json:"date-range"`
	ContactInfo      string      `json:"contact-info"`
	ReportID         string      `json:"report-id"`
	Policies         []PolicyRep `json:"policies"`
}

// DateRange is the day a report covers.
type DateRange struct {
	Start time.Time `json:"start-datetime"`
	End   time.Time `json:"end-datetime"`
}

// PolicyRep is the part of a report for one policy.
type PolicyRep struct {
	Policy         PolicyDesc      `json:"policy"`
	Summary        Summary         `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// PolicyDesc names a policy.
type PolicyDesc struct {
	Type   PolicyType `json:"policy-type"`
	String []string   `json:"policy-string,omitempty"`
	Domain string     `json:"policy-domain"`
	MXHost []string   `json:"mx-host,omitempty"`
}

// Summary counts sessions.
type Summary struct {
	Successful int64 `json:"total-successful-session-count"`
	Failed     int64 `json:"total-failure-session-count"`
}

// FailureDetail counts the failed sessions of one kind.
type FailureDetail struct {
	ResultType     policy.ResultType `json:"result-type"`
	SendingMTAIP   string            `json:"sending-mta-ip,omitempty"`
	ReceivingMX    string            `json:"receiving-mx-hostname,omitempty"`
	ReceivingIP    string            `json:"receiving-ip,omitempty"`
	FailedSessions int64             `json:"failed-session-count"`
	AdditionalInfo string            `json:"additional-information,omitempty"`
	ReasonCode     string            `json:"failure-reason-code,omitempty"`
}

// Session is one counted session (or attempt to have one).
type Session struct {
	Time   time.Time
	Domain string // the policy domain: the recipient domain
	Policy PolicyDesc
	// Result is "" for a success, else the failure's result type.
	Result      policy.ResultType
	ReceivingMX string
	ReceivingIP string
	// Reason is tlsrelay's class, kept as the failure-reason-code.
	Reason string
}

// DefaultInterval is how often a Store writes the reports that changed,
// when its Interval is zero.
const DefaultInterval = time.Minute

// Store keeps the reports in Dir/<YYYY-MM-DD>/<domain>.json. Sessions are
// counted in memory; the reports that changed are written (atomically,
// durably) every Interval, when the UTC day rolls over, and by Flush and
// Close, never while a session is being counted. A process killed
// without Close loses at most the last Interval's counts.
type Store struct {
	Dir string
	// Org names this relay (organization-name, contact-info, report-id).
	Org string
	// Interval is the time between two writes of the changed reports
	// (zero: DefaultInterval).
	Interval time.Duration
	// OnError, if set, is told of a failed write that no caller sees (one
	// made on the timer); the counts stay in memory and are tried again.
	OnError func(error)

	// writeFile writes one report; nil: durable.WriteFile (tests count
	// writes through it).
	writeFile func(path string, data []byte) error

	mu      sync.Mutex
	reports map[string]*kept // by day/domain, loaded lazily
	latest  string           // the latest day counted
	timer   *time.Timer      // the pending timed write, if any
	closed  bool

	// flushing serializes writes, so that an older copy of a report never
	// replaces a newer one.
	flushing sync.Mutex
}

// kept is a report in memory and whether it changed since it was written.
type kept struct {
	r     *Report
	path  string
	day   string
	dirty bool
}

// day is the UTC date of t.
func day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

func (s *Store) path(d, domain string) (string, error) {
	if domain == "" || strings.ContainsAny(domain, `/\`) || strings.HasPrefix(domain, ".") {
		return "", fmt.Errorf("tlsrpt: %q is not a policy domain", domain)
	}
	return filepath.Join(s.Dir, d, domain+".json"), nil
}

// Record counts one session in its day's report for its domain. The
// report is written later (see Store); the first session of a domain and
// day reads the report already on disk, if any, to count on from it.
func (s *Store) Record(ss Session) error {
	d := day(ss.Time)
	p, err := s.path(d, ss.Domain)
	if err != nil {
		return err
	}
	s.mu.Lock()
	key := d + "/" + ss.Domain
	k := s.reports[key]
	if k == nil {
		r, err := readReport(p)
		if errors.Is(err, fs.ErrNotExist) {
			start, _ := time.Parse(time.DateOnly, d)
			r = &Report{OrganizationName: s.Org, ContactInfo: "postmaster@" + s.Org,
				ReportID:  d + "_" + ss.Domain + "@" + s.Org,
				DateRange: DateRange{Start: start, End: start.Add(24*time.Hour - time.Second)}}
		} else if err != nil {
			s.mu.Unlock()
			return err
		}
		if s.reports == nil {
			s.reports = map[string]*kept{}
		}
		k = &kept{r: r, path: p, day: d}
		s.reports[key] = k
	}
	k.r.add(ss)
	k.dirty = true
	rolled := s.latest != "" && d > s.latest
	if d > s.latest {
		s.latest = d
	}
	closed := s.closed
	now := rolled || closed
	if !now && s.timer == nil {
		interval := s.Interval
		if interval <= 0 {
			interval = DefaultInterval
		}
		s.timer = time.AfterFunc(interval, s.tick)
	}
	s.mu.Unlock()
	switch {
	case closed:
		// After Close nothing writes later: this session is written now.
		return s.Flush()
	case rolled:
		// A new day: the last day's reports are complete; write them
		// (and forget them) now, on the side.
		go s.tick()
	}
	return nil
}

// tick is the timed write.
func (s *Store) tick() {
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	if err := s.Flush(); err != nil && s.OnError != nil {
		s.OnError(err)
	}
}

// Flush writes every report that changed since it was last written, and
// forgets the reports of days before the latest one counted. A report
// that cannot be written stays in memory, to be tried again.
func (s *Store) Flush() error {
	s.flushing.Lock()
	defer s.flushing.Unlock()
	type job struct {
		key, path string
		raw       []byte
	}
	var jobs []job
	var errs []error
	s.mu.Lock()
	for key, k := range s.reports {
		if k.dirty {
			raw, err := json.MarshalIndent(k.r, "", "  ")
			if err != nil {
				errs = append(errs, err)
				continue
			}
			jobs = append(jobs, job{key, k.path, append(raw, '\n')})
			k.dirty = false
		}
	}
	s.mu.Unlock()
	write := s.writeFile
	if write == nil {
		write = func(path string, data []byte) error { return durable.WriteFile(path, data, 0o600) }
	}
	failed := map[string]bool{}
	for _, j := range jobs {
		err := durable.MkdirAll(filepath.Dir(j.path), 0o700)
		if err == nil {
			err = write(j.path, j.raw)
		}
		if err != nil {
			failed[j.key] = true
			errs = append(errs, fmt.Errorf("tlsrpt: writing %s: %w", j.path, err))
		}
	}
	s.mu.Lock()
	for key, k := range s.reports {
		switch {
		case failed[key]:
			k.dirty = true
		case !k.dirty && k.day < s.latest:
			delete(s.reports, key) // an earlier day, written: done
		}
	}
	if len(failed) > 0 && s.timer == nil && !s.closed {
		interval := s.Interval
		if interval <= 0 {
			interval = DefaultInterval
		}
		s.timer = time.AfterFunc(interval, s.tick)
	}
	s.mu.Unlock()
	return errors.Join(errs...)
}

// Close stops the timed writes and writes what changed. Sessions recorded
// after Close are written at once.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	return s.Flush()
}

func (r *Report) add(ss Session) {
	var pr *PolicyRep
	for i := range r.Policies {
		q := &r.Policies[i].Policy
		if q.Type == ss.Policy.Type && slices.Equal(q.String, ss.Policy.String) && slices.Equal(q.MXHost, ss.Policy.MXHost) {
			pr = &r.Policies[i]
			break
		}
	}
	if pr == nil {
		desc := ss.Policy
		desc.Domain = ss.Domain
		r.Policies = append(r.Policies, PolicyRep{Policy: desc})
		pr = &r.Policies[len(r.Policies)-1]
	}
	if ss.Result == "" {
		pr.Summary.Successful++
		return
	}
	pr.Summary.Failed++
	for i := range pr.FailureDetails {
		fd := &pr.FailureDetails[i]
		if fd.ResultType == ss.Result && fd.ReceivingMX == ss.ReceivingMX && fd.ReceivingIP == ss.ReceivingIP && fd.ReasonCode == ss.Reason {
			fd.FailedSessions++
			return
		}
	}
	pr.FailureDetails = append(pr.FailureDetails, FailureDetail{ResultType: ss.Result, ReceivingMX: ss.ReceivingMX,
		ReceivingIP: ss.ReceivingIP, FailedSessions: 1, ReasonCode: ss.Reason})
}

func readReport(path string) (*Report, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &r, nil
}

// Entry is one report on disk.
type Entry struct {
	Day, Domain string
	Path        string
	Successful  int64
	Failed      int64
	// Err is why the report or its ledger could not be read (the counts
	// and Sent are then missing): one damaged file is that report's
	// problem, not the list's.
	Err error
	// Sent is what was done to send it to the domain's rua: nil when
	// nothing was ([tlsrpt] send is off, or the day is not over).
	Sent *Ledger
}

// List returns the reports in dir, oldest day first, domains in order.
func List(dir string) ([]Entry, error) {
	days, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, d := range days {
		if _, err := time.Parse(time.DateOnly, d.Name()); err != nil || !d.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, d.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			dom, ok := strings.CutSuffix(f.Name(), ".json")
			if !ok || strings.HasPrefix(dom, ".") {
				continue
			}
			p := filepath.Join(dir, d.Name(), f.Name())
			e := Entry{Day: d.Name(), Domain: dom, Path: p}
			r, err := readReport(p)
			if err != nil {
				e.Err = err
				out = append(out, e)
				continue
			}
			if _, err := os.Stat(LedgerPath(dir, e.Day, dom)); err == nil {
				if e.Sent, err = ReadLedger(dir, e.Day, dom); err != nil {
					e.Sent, e.Err = nil, err
				}
			}
			for _, pr := range r.Policies {
				e.Successful += pr.Summary.Successful
				e.Failed += pr.Summary.Failed
			}
			out = append(out, e)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Day != out[j].Day {
			return out[i].Day < out[j].Day
		}
		return out[i].Domain < out[j].Domain
	})
	return out, nil
}
