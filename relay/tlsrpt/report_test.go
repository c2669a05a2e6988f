package tlsrpt

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"tlsrelay/policy"
)

// TestDailyReportWithBothResults: a day with successes and failures under
// two policies gives one RFC 8460 report for the domain, kept across a
// restart (a new Store), and the next day starts a new one.
func TestDailyReportWithBothResults(t *testing.T) {
	dir := t.TempDir()
	s := &Store{Dir: dir, Org: "relay.example.test"}
	at := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	sts := PolicyDesc{Type: STS, String: []string{"version: STSv1", "mode: enforce", "mx: mx.rpt.test", "max_age: 86400"}, MXHost: []string{"mx.rpt.test"}}
	rec := func(s *Store, ss Session) {
		t.Helper()
		if err := s.Record(ss); err != nil {
			t.Fatal(err)
		}
	}
	rec(s, Session{Time: at, Domain: "rpt.test", Policy: sts, ReceivingMX: "mx.rpt.test"})
	rec(s, Session{Time: at, Domain: "rpt.test", Policy: sts, ReceivingMX: "mx.rpt.test"})
	rec(s, Session{Time: at, Domain: "rpt.test", Policy: sts, Result: policy.ResultCertExpired, ReceivingMX: "mx.rpt.test", ReceivingIP: "127.0.0.1", Reason: "expired"})
	s2 := &Store{Dir: dir, Org: "relay.example.test"}
	rec(s2, Session{Time: at.Add(time.Hour), Domain: "rpt.test", Policy: sts, Result: policy.ResultCertExpired, ReceivingMX: "mx.rpt.test", ReceivingIP: "127.0.0.1", Reason: "expired"})
	rec(s2, Session{Time: at.Add(time.Hour), Domain: "rpt.test", Policy: PolicyDesc{Type: TLSA, String: []string{"3 1 1 ab"}}, Result: policy.ResultValidationFailure, ReceivingMX: "mx2.rpt.test", Reason: "dane_mismatch"})
	rec(s2, Session{Time: at.Add(24 * time.Hour), Domain: "rpt.test", Policy: sts})

	raw, err := os.ReadFile(dir + "/2026-11-29/rpt.test.json")
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	dr := r["date-range"].(map[string]any)
	if dr["start-datetime"] != "2026-11-29T00:00:00Z" || dr["end-datetime"] != "2026-11-29T23:59:59Z" || r["organization-name"] != "relay.example.test" {
		t.Errorf("header: %s", raw)
	}
	pols := r["policies"].([]any)
	if len(pols) != 2 {
		t.Fatalf("%d policies: %s", len(pols), raw)
	}
	p0 := pols[0].(map[string]any)
	sum := p0["summary"].(map[string]any)
	if p0["policy"].(map[string]any)["policy-type"] != "sts" || p0["policy"].(map[string]any)["policy-domain"] != "rpt.test" ||
		sum["total-successful-session-count"] != 2.0 || sum["total-failure-session-count"] != 2.0 {
		t.Errorf("sts policy: %v", p0)
	}
	fd := p0["failure-details"].([]any)
	if len(fd) != 1 || fd[0].(map[string]any)["result-type"] != "certificate-expired" || fd[0].(map[string]any)["failed-session-count"] != 2.0 ||
		fd[0].(map[string]any)["receiving-mx-hostname"] != "mx.rpt.test" {
		t.Errorf("failure details: %v", fd)
	}
	if pols[1].(map[string]any)["policy"].(map[string]any)["policy-type"] != "tlsa" {
		t.Errorf("tlsa policy: %v", pols[1])
	}
	list, err := List(dir)
	if err != nil || len(list) != 2 || list[0].Day != "2026-11-29" || list[0].Successful != 2 || list[0].Failed != 3 || list[1].Day != "2026-11-30" || list[1].Successful != 1 {
		t.Errorf("List: %+v, %v", list, err)
	}
}
