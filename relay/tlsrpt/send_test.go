package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/dnsx"
	"tlsrelay/relay/dnsx/dnstest"
)

func TestParseRecord(t *testing.T) {
	for _, c := range []struct {
		txt  string
		want []string // the RUAs' Mailto or HTTPS URL
		err  string
	}{
		{"v=TLSRPTv1; rua=mailto:tlsrpt@example.test", []string{"tlsrpt@example.test"}, ""},
		{"v=TLSRPTv1;rua=https://reports.example.test/v1/tlsrpt", []string{"https://reports.example.test/v1/tlsrpt"}, ""},
		{"v=TLSRPTv1 ; rua=mailto:a@x.test , https://r.test/p ;", []string{"a@x.test", "https://r.test/p"}, ""},
		{"v=TLSRPTv1; rua=mailto:a@x.test,mailto:a@x.test; ext.x=1", []string{"a@x.test"}, ""},
		{"v=TLSRPTv1; rua=mailto:tls%2Brpt@x.test", []string{"tls+rpt@x.test"}, ""},
		{"v=TLSRPTv1; rua=https://r.test/a%2Cb%21c,mailto:a@x.test", []string{"https://r.test/a%2Cb%21c", "a@x.test"}, ""},
		{"v=TLSRPTv1; rua=ftp://x.test/,mailto:a@x.test", []string{"a@x.test"}, ""},
		{"v=TLSRPTv2; rua=mailto:a@x.test", nil, "does not start with v=TLSRPTv1"},
		{"rua=mailto:a@x.test; v=TLSRPTv1", nil, "does not start with v=TLSRPTv1"},
		{"v=TLSRPTv1", nil, "no rua field"},
		{"v=TLSRPTv1; ext=1", nil, "no rua field"},
		{"v=TLSRPTv1; rua=mailto:a@x.test; rua=mailto:b@x.test", nil, "more than one rua"},
		{"v=TLSRPTv1; rua=mailto:a@x.test!10m", nil, "TLS-RPT has no size limit"},
		{"v=TLSRPTv1; rua=mailto:a@x.test,,mailto:b@x.test", nil, "empty URI"},
		{"v=TLSRPTv1; rua=a@x.test", nil, "no scheme"},
		{"v=TLSRPTv1; rua=mailto:not-an-address", nil, "rua URI"},
		{"v=TLSRPTv1; rua=mailto:a@x.test?subject=hi", nil, "not mailto:<address>"},
		{"v=TLSRPTv1; rua=https:///nohost", nil, "not https://<host>"},
		{"v=TLSRPTv1; rua=ftp://x.test/", nil, "no rua URI is mailto: or https:"},
		{"v=TLSRPTv1; rua=mailto:a@x.test; bad field", nil, "not name=value"},
		{"v=TLSRPTv1; rua=mailto:a@x.test; ext=a=b", nil, "does not allow"},
		{"v=TLSRPTv1; rua=mailto:é@x.test", nil, "non-ASCII"},
	} {
		rec, err := ParseRecord(c.txt)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error saying %q", c.txt, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.txt, err)
			continue
		}
		var got []string
		for _, r := range rec.RUAs {
			if r.HTTPS != nil {
				got = append(got, r.HTTPS.String())
			} else {
				got = append(got, r.Mailto)
			}
		}
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%q: RUAs %q, want %q", c.txt, got, c.want)
		}
	}
}

// TestLookupRecord: the record is found among other TXT records; two
// TLS-RPT records, or none, are no record; a malformed one is a
// *RecordError.
func TestLookupRecord(t *testing.T) {
	dns := startDNS(t,
		`_smtp._tls.one.test. TXT "v=spf1 -all"`, `_smtp._tls.one.test. TXT "v=TLSRPTv1; rua=mailto:r@one.test"`,
		`_smtp._tls.two.test. TXT "v=TLSRPTv1; rua=mailto:r@two.test"`, `_smtp._tls.two.test. TXT "v=TLSRPTv1; rua=mailto:s@two.test"`,
		`_smtp._tls.other.test. TXT "v=STSv1; id=1"`, `_smtp._tls.bad.test. TXT "v=TLSRPTv1; rua=r@bad.test"`,
		// A bare version is no TLS-RPT record (it lacks its ';'), so
		// bare.test has one record, not two.
		`_smtp._tls.bare.test. TXT "v=TLSRPTv1"`, `_smtp._tls.bare.test. TXT "v=TLSRPTv1; rua=mailto:r@bare.test"`)
	res := &dnsx.Client{Server: dns.Addr()}
	ctx := context.Background()
	if rec, err := LookupRecord(ctx, res, "one.test"); err != nil || len(rec.RUAs) != 1 || rec.RUAs[0].Mailto != "r@one.test" {
		t.Errorf("one.test: %+v, %v", rec, err)
	}
	if rec, err := LookupRecord(ctx, res, "bare.test"); err != nil || len(rec.RUAs) != 1 || rec.RUAs[0].Mailto != "r@bare.test" {
		t.Errorf("bare.test: %+v, %v", rec, err)
	}
	var re *RecordError
	if _, err := LookupRecord(ctx, res, "two.test"); !errors.As(err, &re) || !strings.Contains(err.Error(), "2 records") {
		t.Errorf("two.test: %v", err)
	}
	if _, err := LookupRecord(ctx, res, "bad.test"); !errors.As(err, &re) || !strings.Contains(err.Error(), "no scheme") {
		t.Errorf("bad.test: %v", err)
	}
	for _, d := range []string{"other.test", "none.test"} {
		if _, err := LookupRecord(ctx, res, d); !errors.Is(err, ErrNoRecord) {
			t.Errorf("%s: %v, want ErrNoRecord", d, err)
		}
	}
}

// rptServer is an HTTPS server taking reports, under its own CA.
type rptServer struct {
	srv    *httptest.Server
	roots  *x509.CertPool
	mu     sync.Mutex
	got    []*http.Request
	bodies [][]byte
	status int
}

func startRPTServer(t *testing.T, host string) *rptServer {
	ca, err := certgen.NewCA("Reports CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(certgen.Options{DNSNames: []string{host}})
	if err != nil {
		t.Fatal(err)
	}
	rs := &rptServer{roots: x509.NewCertPool(), status: http.StatusOK}
	rs.roots.AddCert(ca.Cert)
	rs.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rs.mu.Lock()
		rs.got = append(rs.got, r)
		rs.bodies = append(rs.bodies, body)
		status := rs.status
		rs.mu.Unlock()
		w.WriteHeader(status)
	}))
	rs.srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}
	rs.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	rs.srv.StartTLS()
	t.Cleanup(rs.srv.Close)
	return rs
}

// dial reaches the server whatever name is dialed.
func (rs *rptServer) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, rs.srv.Listener.Addr().String())
}

func (rs *rptServer) count() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.got)
}

// writeDay writes a day's report for domain into a Store at dir.
func writeDay(t *testing.T, dir, domain string, at time.Time) {
	s := &Store{Dir: dir, Org: "relay.example.test"}
	if err := s.Record(Session{Time: at, Domain: domain, Policy: PolicyDesc{Type: NoPolicyFound}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

type logLines struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSendHTTPS: after the day ends, the report goes to the https rua as
// gzip'ed JSON that decodes to the day's report with the configured
// organization-name, once: a restarted sender (a new Sender on the same
// directory) sends nothing again. A report server with a certificate
// that does not verify is refused, and the report is tried again later.
func TestSendHTTPS(t *testing.T) {
	dns := startDNS(t,
		`_smtp._tls.rcpt.test. TXT "v=TLSRPTv1; rua=https://reports.rcpt.test/tlsrpt"`)
	rs := startRPTServer(t, "reports.rcpt.test")
	dir := t.TempDir()
	day := time.Date(2026, 11, 28, 15, 0, 0, 0, time.UTC)
	writeDay(t, dir, "rcpt.test", day)
	now := day.Add(9*time.Hour + 2*time.Minute) // 00:02 the next day
	var logs logLines
	sent := map[string]int{}
	newSender := func(roots *x509.CertPool) *Sender {
		return &Sender{Dir: dir, Resolver: &dnsx.Client{Server: dns.Addr()}, Poster: &Poster{Dial: rs.dial, Roots: roots},
			Org: "Example Org", Contact: "tlsrpt@example.test", Now: func() time.Time { return now },
			Log: slog.New(slog.NewTextHandler(&logs, nil)), Sent: func(tr, res string) { sent[tr+"/"+res]++ },
			Queue: func(string, string, []byte) error { t.Error("a mailto send for an https rua"); return nil }}
	}

	// Untrusted: the system roots do not know the test CA.
	next := newSender(x509.NewCertPool()).Pass(context.Background())
	if rs.count() != 0 || next.IsZero() || sent["https/failed"] != 1 {
		t.Fatalf("untrusted server: %d requests, next %v, %v", rs.count(), next, sent)
	}
	l, _ := ReadLedger(dir, "2026-11-28", "rcpt.test")
	if len(l.RUAs) != 1 || l.RUAs[0].Result != Pending || !strings.Contains(l.RUAs[0].Error, "does not verify") {
		t.Fatalf("ledger after the untrusted try: %+v", l)
	}
	// Not yet due: nothing is tried.
	newSender(rs.roots).Pass(context.Background())
	if rs.count() != 0 {
		t.Fatal("tried before the backoff ended")
	}
	now = next
	newSender(rs.roots).Pass(context.Background())
	if rs.count() != 1 {
		t.Fatalf("%d POSTs, want 1\n%s", rs.count(), logs.String())
	}
	req, body := rs.got[0], rs.bodies[0]
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/tlsrpt+gzip" || req.URL.Path != "/tlsrpt" || req.Host != "reports.rcpt.test" {
		t.Errorf("request: %s %s %s %q", req.Method, req.Host, req.URL, req.Header.Get("Content-Type"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.NewDecoder(zr).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.OrganizationName != "Example Org" || r.ContactInfo != "tlsrpt@example.test" || !r.DateRange.Start.Equal(time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)) ||
		len(r.Policies) != 1 || r.Policies[0].Summary.Successful != 1 || r.Policies[0].Policy.Domain != "rcpt.test" {
		t.Errorf("report: %+v", r)
	}
	if !strings.Contains(logs.String(), "TLS-RPT report sent") || !strings.Contains(logs.String(), "result=delivered") || sent["https/delivered"] != 1 {
		t.Errorf("no log line or count of the report sent: %v\n%s", sent, logs.String())
	}
	// A restart: the ledger says it was delivered.
	now = now.Add(time.Hour)
	if next := newSender(rs.roots).Pass(context.Background()); rs.count() != 1 || !next.IsZero() {
		t.Errorf("after a restart: %d POSTs, next %v", rs.count(), next)
	}
}

// TestSendRetriesThenGivesUp: a report server answering 500 is tried
// again with backoff, and given up three days after the report's day.
// A domain without a record is recorded as such and never looked up
// again; today's report is not sent.
func TestSendRetriesThenGivesUp(t *testing.T) {
	dns := startDNS(t,
		`_smtp._tls.rcpt.test. TXT "v=TLSRPTv1; rua=https://reports.rcpt.test/tlsrpt"`)
	rs := startRPTServer(t, "reports.rcpt.test")
	rs.status = http.StatusInternalServerError
	dir := t.TempDir()
	day := time.Date(2026, 11, 28, 15, 0, 0, 0, time.UTC)
	writeDay(t, dir, "rcpt.test", day)
	writeDay(t, dir, "norecord.test", day)
	writeDay(t, dir, "today.test", day.Add(24*time.Hour))
	now := day.Add(10 * time.Hour)
	var logs logLines
	s := &Sender{Dir: dir, Resolver: &dnsx.Client{Server: dns.Addr()}, Poster: &Poster{Dial: rs.dial, Roots: rs.roots},
		Now: func() time.Time { return now }, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	s.Pass(context.Background())
	if tl, _ := ReadLedger(dir, "2026-11-29", "today.test"); tl.Looked || tl.Result != "" {
		t.Errorf("the report of the day not yet ended was worked on: %+v", tl)
	}
	var tries int
	for range 100 {
		next := s.Pass(context.Background())
		if next.IsZero() {
			break
		}
		tries++
		now = next
	}
	l, _ := ReadLedger(dir, "2026-11-28", "rcpt.test")
	if l.RUAs[0].Result != GaveUp || rs.count() != l.RUAs[0].Attempts || rs.count() < 5 || rs.count() > 30 {
		t.Errorf("after %d passes: %d POSTs, ledger %+v", tries, rs.count(), l)
	}
	if now.Before(day.Add(3 * 24 * time.Hour)) {
		t.Errorf("given up at %v, before the day + 3", now)
	}
	nl, _ := ReadLedger(dir, "2026-11-28", "norecord.test")
	if nl.Result != NoRecord {
		t.Errorf("norecord.test: %+v", nl)
	}
	if !strings.Contains(logs.String(), "result=gave-up") || !strings.Contains(logs.String(), "HTTP 500") {
		t.Errorf("logs:\n%s", logs.String())
	}
}

// TestSendLedgerWriteFails: while ledgers cannot be written (a full
// disk), a report a rua took is not sent to it again, pass after pass;
// once they can, the ledger says it was delivered. An unreadable report
// or ledger of another day does not stop the rest.
func TestSendLedgerWriteFails(t *testing.T) {
	dns := startDNS(t,
		`_smtp._tls.rcpt.test. TXT "v=TLSRPTv1; rua=https://reports.rcpt.test/tlsrpt"`)
	rs := startRPTServer(t, "reports.rcpt.test")
	dir := t.TempDir()
	day := time.Date(2026, 11, 28, 15, 0, 0, 0, time.UTC)
	writeDay(t, dir, "rcpt.test", day)
	// Damage of other days: a report and a ledger that do not parse.
	writeDay(t, dir, "older.test", day.Add(-24*time.Hour))
	if err := os.WriteFile(filepath.Join(dir, "2026-11-27", "older.test.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeDay(t, dir, "oldest.test", day.Add(-48*time.Hour))
	if err := os.WriteFile(LedgerPath(dir, "2026-11-26", "oldest.test"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	now := day.Add(9*time.Hour + 2*time.Minute)
	var logs logLines
	s := &Sender{Dir: dir, Resolver: &dnsx.Client{Server: dns.Addr()}, Poster: &Poster{Dial: rs.dial, Roots: rs.roots},
		Now: func() time.Time { return now }, Log: slog.New(slog.NewTextHandler(&logs, nil))}

	full := errors.New("no space left on device")
	orig := writeLedger
	t.Cleanup(func() { writeLedger = orig })
	writeLedger = func(string, *Ledger) error { return full }
	for i := 0; i < 5; i++ {
		next := s.Pass(context.Background())
		if next.IsZero() {
			t.Fatalf("pass %d: nothing due next while the ledger is not written", i)
		}
		now = next
	}
	if rs.count() != 1 {
		t.Fatalf("%d POSTs while the ledger could not be written, want 1\n%s", rs.count(), logs.String())
	}
	writeLedger = orig
	if next := s.Pass(context.Background()); !next.IsZero() {
		t.Errorf("next %v after the ledger was written", next)
	}
	l, err := ReadLedger(dir, "2026-11-28", "rcpt.test")
	if err != nil || len(l.RUAs) != 1 || l.RUAs[0].Result != Delivered || rs.count() != 1 {
		t.Fatalf("ledger %+v, %v; %d POSTs", l, err, rs.count())
	}
	list, err := List(dir)
	if err != nil || len(list) != 3 {
		t.Fatalf("List with damaged files: %d entries, %v", len(list), err)
	}
	for _, e := range list {
		if (e.Domain == "rcpt.test") != (e.Err == nil) {
			t.Errorf("%s %s: Err %v", e.Day, e.Domain, e.Err)
		}
	}
}

// startDNS starts a DNS server on loopback serving records, for the test.
func startDNS(t *testing.T, records ...string) *dnstest.Server {
	t.Helper()
	dns, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	dns.MustAdd(records...)
	return dns
}
