package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay"
	"tlsrelay/relay/tlsrpt"
)

func TestTLSRPTCommand(t *testing.T) {
	tmp := t.TempDir()
	spool := filepath.Join(tmp, "spool")
	cfg := filepath.Join(tmp, "tlsrelay.toml")
	os.WriteFile(cfg, []byte("[queue]\ndir = \""+spool+"\"\n[[destination]]\ndomains = [\"*\"]\nupstream = \"mx\"\n"), 0o600)
	run := func(args ...string) (string, int) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"tlsrpt", "-config", cfg}, args...), nil, &out, &errOut)
		return out.String() + errOut.String(), code
	}
	if out, code := run(); code != 0 || !strings.Contains(out, "no TLS-RPT reports") {
		t.Errorf("empty: %d %s", code, out)
	}
	st := &tlsrpt.Store{Dir: relay.TLSRPTDir(spool), Org: "relay.test"}
	day := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	desc := tlsrpt.PolicyDesc{Type: tlsrpt.NoPolicyFound}
	st.Record(tlsrpt.Session{Time: day, Domain: "rpt.test", Policy: desc})
	st.Record(tlsrpt.Session{Time: day, Domain: "rpt.test", Policy: desc, Result: policy.ResultCertExpired, ReceivingMX: "mx.rpt.test", Reason: "expired"})
	st.Record(tlsrpt.Session{Time: day.Add(24 * time.Hour), Domain: "rpt.test", Policy: desc})
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// What was sent of the 28th (the ledger the sender keeps).
	ledger, _ := json.Marshal(tlsrpt.Ledger{Day: "2026-11-28", Domain: "rpt.test", Looked: true,
		RUAs: []tlsrpt.RUAState{{URI: "https://r.rpt.test/v1", Result: tlsrpt.Delivered}, {URI: "mailto:r@rpt.test", Result: tlsrpt.Queued}}})
	os.WriteFile(tlsrpt.LedgerPath(relay.TLSRPTDir(spool), "2026-11-28", "rpt.test"), ledger, 0o600)

	out, code := run()
	if code != 0 || !strings.Contains(out, "2026-11-28  rpt.test") || !strings.Contains(out, "2026-11-29  rpt.test") ||
		!strings.Contains(out, "delivered https://r.rpt.test/v1, queued mailto:r@rpt.test\n") || strings.Count(out, "rpt.test ") != 2 {
		t.Errorf("list: %d\n%s", code, out)
	}
	if out, code = run("-json"); code != 0 || !strings.Contains(out, `"result": "delivered"`) {
		t.Errorf("list -json: %d\n%s", code, out)
	}
	out, code = run("rpt.test", "2026-11-28")
	var rep tlsrpt.Report
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Policies[0].Summary.Successful != 1 || rep.Policies[0].Summary.Failed != 1 {
		t.Errorf("print: %d %v\n%s", code, err, out)
	}
	if out, code = run("rpt.test"); code != 0 || !strings.Contains(out, `"start-datetime": "2026-11-29T00:00:00Z"`) {
		t.Errorf("latest: %d\n%s", code, out)
	}
	if _, code = run("other.test"); code != 1 {
		t.Errorf("no report: exit %d", code)
	}
}
