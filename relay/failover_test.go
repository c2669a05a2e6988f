package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
	"tlsrelay/relay/spool"
)

// hopsDestination renders a [[destination]] with several upstreams, all
// verified under one policy (one CA, one required name).
func hopsDestination(domain string, upstreams []string, caFile, name string, extra ...string) string {
	q := make([]string, len(upstreams))
	for i, u := range upstreams {
		q[i] = fmt.Sprintf("%q", u)
	}
	s := fmt.Sprintf(`
[[destination]]
domains = [%q]
upstream = [%s]
ca_file = %q
server_name = %q
require_hostname = [%q]
`, domain, strings.Join(q, ", "), caFile, name, name)
	for _, e := range extra {
		s += e + "\n"
	}
	return s
}

// TestFailoverToSecondary: a primary that is down, one with a
// certificate the policy does not trust, and one that greets with 421 are
// each passed over for the secondary, which gets the message; the log
// names both hops and why the first failed.
func TestFailoverToSecondary(t *testing.T) {
	p := newPKI(t, "Test CA")
	other := newPKI(t, "Other CA")
	for _, tc := range []struct {
		name    string
		primary func(t *testing.T) string
		class   string
	}{
		{"primary down", func(t *testing.T) string { return freePort(t) }, "failure=connect"},
		{"primary bad certificate", func(t *testing.T) string {
			return startSink(t, sink.Options{Cert: other.leaf(t, "mx.example.test").TLSCertificate()}).Addr()
		}, "tls_failure=unknown_authority"},
		{"primary answers 421", func(t *testing.T) string {
			raw, err := sink.StartRaw(func(c *sink.RawConn) { c.Say("421 4.7.0 mx busy, too many connections, try again later\r\n") })
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return raw.Addr()
		}, "upstream_temporary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary := tc.primary(t)
			secondary := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
			tr := startRelay(t, baseConfig(t.TempDir())+
				hopsDestination("example.test", []string{primary, secondary.Addr()}, p.caFile, "mx.example.test"))
			if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
				t.Fatal(err)
			}
			if !secondary.Wait(1, 10*time.Second) {
				t.Fatal("the secondary did not get the message")
			}
			eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
			logs := tr.logs.String()
			for _, want := range []string{"upstream failed; trying the next one", "failed_upstream=" + primary,
				"next_upstream=" + secondary.Addr(), tc.class, "msg=delivered"} {
				if !strings.Contains(logs, want) {
					t.Errorf("log lacks %q:\n%s", want, logs)
				}
			}
		})
	}
}

// TestRecipient5xxIsNotRetriedOnSecondary: a recipient the primary
// refuses with 5xx is that recipient's answer: it bounces, and the
// secondary never sees the message.
func TestRecipient5xxIsNotRetriedOnSecondary(t *testing.T) {
	p := newPKI(t, "Test CA")
	primary := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		Refuse: func(rcpt string) *smtp.SMTPError {
			if strings.HasPrefix(rcpt, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}})
	secondary := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+
		hopsDestination("example.test", []string{primary.Addr(), secondary.Addr()}, p.caFile, "mx.example.test", `on_failure = "reject"`))
	_, err := submit(tr.Addr().String(), "app@sender.test", []string{"nobody@example.test"}, testBody)
	if smtpCode(err) != 550 || !strings.Contains(err.Error(), "no such user") {
		t.Fatalf("reply: %v, want the primary's 550", err)
	}
	// A queued one: the good recipient is delivered by the primary, the
	// refused one fails there, and nothing goes to the secondary.
	tr2 := startRelay(t, baseConfig(t.TempDir())+
		hopsDestination("example.test", []string{primary.Addr(), secondary.Addr()}, p.caFile, "mx.example.test"))
	if _, err := submit(tr2.Addr().String(), "", []string{"nobody@example.test", "rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr2.QueueSize() == 0 })
	if primary.Count() != 1 || secondary.Count() != 0 {
		t.Errorf("primary got %d, secondary %d; want 1 and 0", primary.Count(), secondary.Count())
	}
}

// TestAllHopsFailedNamesEach: when every hop fails, the message is
// deferred as today, and its state has an attempt per hop with its own
// failure; suspension after a timeout is per hop, so the next message
// skips the dead primary without waiting for it.
func TestAllHopsFailedNamesEach(t *testing.T) {
	p := newPKI(t, "Test CA")
	other := newPKI(t, "Other CA")
	down := freePort(t)
	bad := startSink(t, sink.Options{Cert: other.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, slowRetries(t.TempDir())+
		hopsDestination("example.test", []string{down, bad.Addr()}, p.caFile, "mx.example.test"))
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	var st spool.State
	eventually(t, 5*time.Second, "two attempts recorded", func() bool {
		ids, _ := tr.store.List()
		if len(ids) != 1 {
			return false
		}
		msg, err := tr.store.Open(ids[0])
		if err != nil {
			return false
		}
		defer msg.Close()
		st, _ = tr.store.LoadState(msg.Envelope)
		return len(st.History) >= 2
	})
	if a := st.History[0]; a.Upstream != down || a.Result != "connect" {
		t.Errorf("first attempt: %+v", a)
	}
	if a := st.History[1]; a.Upstream != bad.Addr() || a.Result != "unknown_authority" {
		t.Errorf("second attempt: %+v", a)
	}
	rc := st.Recipients[0]
	if !strings.Contains(rc.Reason, "all 2 upstreams failed") || !strings.Contains(rc.Reason, down) || !strings.Contains(rc.Reason, bad.Addr()) {
		t.Errorf("the recipient's state does not name each hop: %q", rc.Reason)
	}
}

// TestSuspendedPrimaryIsSkipped: a primary that accepts and never greets
// is suspended after its timeout, per hop: the next message goes to the
// secondary at once.
func TestSuspendedPrimaryIsSkipped(t *testing.T) {
	p := newPKI(t, "Test CA")
	hang, err := sink.StartSilent("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hang.Close() })
	secondary := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	cfg := strings.Replace(slowRetries(t.TempDir()), `connect_timeout = "5s"`, `connect_timeout = "1100ms"`, 1)
	tr := startRelay(t, cfg+hopsDestination("example.test", []string{hang.Addr(), secondary.Addr()}, p.caFile, "mx.example.test"))
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !secondary.Wait(1, 10*time.Second) {
		t.Fatal("the first message did not reach the secondary")
	}
	before := hang.Accepted()
	if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
		t.Fatal(err)
	}
	if !secondary.Wait(2, 10*time.Second) {
		t.Fatal("the second message did not reach the secondary")
	}
	if hang.Accepted() != before {
		t.Error("the suspended primary was tried again")
	}
	if !strings.Contains(tr.logs.String(), "not tried: the upstream is suspended") {
		t.Errorf("log does not say the primary was skipped:\n%s", tr.logs.String())
	}
}
