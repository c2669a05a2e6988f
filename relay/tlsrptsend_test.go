package relay

import (
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"tlsrelay/relay/sink"
	"tlsrelay/relay/tlsrpt"
)

// tlsrptWorld is an MX world where rcpt.test publishes a TLS-RPT record
// whose rua is a mailbox at reports.test (a sink), with yesterday's report
// of rcpt.test and of second.test (no record) in a spool directory.
type tlsrptWorld struct {
	*mxWorld
	reports *sink.Sink
	spool   string
	dkimTXT string
	cfg     func(tlsrptTable string) string
}

func newTLSRPTWorld(t *testing.T) *tlsrptWorld {
	w := &tlsrptWorld{mxWorld: newMXWorld(t), spool: t.TempDir()}
	w.reports = w.Host("mx.reports.test", sink.Options{})
	w.DNS.MustAdd("reports.test. MX 10 mx.reports.test.", `_smtp._tls.rcpt.test. TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"`)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	keyFile, txt := dkimKey(t, key, "ed25519")
	w.dkimTXT = txt
	yesterday := time.Now().UTC().Add(-24 * time.Hour)
	st := &tlsrpt.Store{Dir: TLSRPTDir(w.spool), Org: "relay.test"}
	for _, d := range []string{"rcpt.test", "second.test"} {
		if err := st.Record(tlsrpt.Session{Time: yesterday, Domain: d, Policy: tlsrpt.PolicyDesc{Type: tlsrpt.NoPolicyFound}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	w.cfg = func(tlsrptTable string) string {
		return baseConfig(w.spool) + fmt.Sprintf("\n[dns]\nresolver = %q\nallow_internal_addresses = true\n", w.DNS.Addr()) + tlsrptTable +
			fmt.Sprintf("\n[[destination]]\ndomains = [\"*\"]\nupstream = \"mx\"\nca_file = %q\n", w.CAFile) +
			fmt.Sprintf("\n[[dkim]]\ndomain = \"relay.test\"\nselector = \"s\"\nprivate_key_file = %q\n", keyFile)
	}
	return w
}

// TestTLSRPTMailtoReport: with [tlsrpt] send = true, yesterday's report
// goes at start to the mailto: rua as report mail through the relay's
// queue, DKIM-signed, in RFC 8460's form; a domain without a record gets
// nothing. After a restart the ledger stops a second send.
func TestTLSRPTMailtoReport(t *testing.T) {
	w := newTLSRPTWorld(t)
	day := time.Now().UTC().Add(-24 * time.Hour).Format(time.DateOnly)
	tr := startRelayWith(t, w.cfg("\n[tlsrpt]\nsend = true\norganization_name = \"Relay Org\"\n"), Options{MXDial: w.Dial})
	if !w.reports.Wait(1, 10*time.Second) {
		t.Fatalf("no report mail reached the rua's mail exchanger\n%s", tr.logs.String())
	}
	m := w.reports.Messages()[0]
	if m.From != "" || len(m.To) != 1 || m.To[0] != "tlsrpt@reports.test" {
		t.Errorf("envelope: <%s> → %v", m.From, m.To)
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name == "s._domainkey.relay.test" {
			return []string{w.dkimTXT}, nil
		}
		return nil, fmt.Errorf("no TXT for %s", name)
	}})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "relay.test" {
		t.Fatalf("DKIM: %v %+v", err, verifs)
	}
	signed := strings.ToLower(strings.Join(verifs[0].HeaderKeys, ":"))
	if !strings.Contains(signed, "tls-report-domain") || !strings.Contains(signed, "tls-report-submitter") {
		t.Errorf("the DKIM signature does not cover the report's fields: h=%s", signed)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	h := msg.Header
	if h.Get("TLS-Report-Domain") != "rcpt.test" || h.Get("TLS-Report-Submitter") != "relay.test" || h.Get("From") != "<postmaster@relay.test>" ||
		!strings.HasPrefix(h.Get("Subject"), "Report Domain: rcpt.test Submitter: relay.test Report-ID: <"+day+"_rcpt.test@relay.test>") {
		t.Errorf("headers: %v", h)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", h.Get("Content-Type"))
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	text, err := mr.NextPart()
	if err != nil || !strings.HasPrefix(text.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("first part: %v %v", err, text.Header)
	}
	att, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	amt, aparams, _ := mime.ParseMediaType(att.Header.Get("Content-Type"))
	wantName := fmt.Sprintf("relay.test!rcpt.test!%d!%d.json.gz", mustDay(t, day).Unix(), mustDay(t, day).Add(24*time.Hour-time.Second).Unix())
	if amt != "application/tlsrpt+gzip" || aparams["name"] != wantName || att.Header.Get("Content-Transfer-Encoding") != "base64" {
		t.Errorf("attachment header: %v (want name %s)", att.Header, wantName)
	}
	zr, err := gzip.NewReader(base64.NewDecoder(base64.StdEncoding, att))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	var r tlsrpt.Report
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	if r.OrganizationName != "Relay Org" || r.ContactInfo != "postmaster@relay.test" || len(r.Policies) != 1 ||
		r.Policies[0].Policy.Domain != "rcpt.test" || r.Policies[0].Summary.Successful != 1 {
		t.Errorf("report: %s", raw)
	}
	if _, err := mr.NextPart(); err != io.EOF {
		t.Errorf("a third part: %v", err)
	}
	eventually(t, 5*time.Second, "the ledger of second.test", func() bool {
		l, err := tlsrpt.ReadLedger(TLSRPTDir(w.spool), day, "second.test")
		return err == nil && l.Result == tlsrpt.NoRecord
	})
	l, _ := tlsrpt.ReadLedger(TLSRPTDir(w.spool), day, "rcpt.test")
	if len(l.RUAs) != 1 || l.RUAs[0].Result != tlsrpt.Queued {
		t.Errorf("ledger: %+v", l)
	}
	if logs := tr.logs.String(); !strings.Contains(logs, `msg="TLS-RPT report sent" domain=rcpt.test day=`+day+` rua=mailto:tlsrpt@reports.test result=queued`) {
		t.Errorf("no log line of the report sent:\n%s", logs)
	}

	// A restart: rcpt.test's report is not sent again. The new relay's
	// pass is over once it has written the ledger of a third report, of a
	// domain that sorts after rcpt.test.
	tr.stop()
	st := &tlsrpt.Store{Dir: TLSRPTDir(w.spool), Org: "relay.test"}
	st.Record(tlsrpt.Session{Time: mustDay(t, day).Add(time.Hour), Domain: "third.test", Policy: tlsrpt.PolicyDesc{Type: tlsrpt.NoPolicyFound}})
	st.Close()
	tr2 := startRelayWith(t, w.cfg("\n[tlsrpt]\nsend = true\n"), Options{MXDial: w.Dial})
	eventually(t, 5*time.Second, "the ledger of third.test", func() bool {
		l, err := tlsrpt.ReadLedger(TLSRPTDir(w.spool), day, "third.test")
		return err == nil && l.Result == tlsrpt.NoRecord
	})
	tr2.stop()
	if strings.Contains(tr2.logs.String(), "TLS-RPT report mail queued") || w.reports.Count() != 1 {
		t.Errorf("sent again after a restart: %d messages\n%s", w.reports.Count(), tr2.logs.String())
	}
}

// TestTLSRPTInternalEndpointRefused: without [dns]
// allow_internal_addresses, an https: rua whose host resolves to an
// internal address is not dialed, and the log names it as the report
// endpoint (not as some other server) and what allows it.
func TestTLSRPTInternalEndpointRefused(t *testing.T) {
	w := newTLSRPTWorld(t)
	w.DNS.MustAdd(`_smtp._tls.second.test. TXT "v=TLSRPTv1; rua=https://tlsrpt.reports.test/v1"`, "tlsrpt.reports.test. A 127.0.0.1")
	cfg := strings.Replace(w.cfg("\n[tlsrpt]\nsend = true\n"), "allow_internal_addresses = true", "allow_internal_addresses = false", 1)
	tr := startRelayWith(t, cfg, Options{MXDial: w.Dial})
	want := "the TLS-RPT report endpoint tlsrpt.reports.test resolves to 127.0.0.1, an internal address; refused (set [dns] allow_internal_addresses to allow)"
	eventually(t, 5*time.Second, "the refusal in the log", func() bool { return strings.Contains(tr.logs.String(), want) })
}

// TestTLSRPTOffByDefault: without [tlsrpt] send = true nothing is looked
// up, sent or recorded.
func TestTLSRPTOffByDefault(t *testing.T) {
	w := newTLSRPTWorld(t)
	tr := startRelayWith(t, w.cfg(""), Options{MXDial: w.Dial})
	if tr.stopTLSRPT != nil {
		t.Error("the sender runs")
	}
	time.Sleep(300 * time.Millisecond) // what a running sender would do at start, it would have done
	tr.stop()
	day := time.Now().UTC().Add(-24 * time.Hour).Format(time.DateOnly)
	if _, err := os.Stat(tlsrpt.LedgerPath(TLSRPTDir(w.spool), day, "rcpt.test")); !os.IsNotExist(err) || w.reports.Count() != 0 || w.DNS.Queries() != 0 {
		t.Errorf("sent with send off: ledger %v, %d messages, %d DNS queries", err, w.reports.Count(), w.DNS.Queries())
	}
	if m, _ := filepath.Glob(filepath.Join(TLSRPTDir(w.spool), "*", "*.sent")); len(m) != 0 {
		t.Errorf("ledgers: %v", m)
	}
}

func mustDay(t *testing.T, day string) time.Time {
	d, err := time.Parse(time.DateOnly, day)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
