package relay

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/sink"
)

// TestThrottledUpstreamBacksOff: an upstream that answers 421 "too many
// connections" for a while is backed off as a whole — messages meanwhile
// skip it instead of hammering it — and everything is delivered once it
// stops.
func TestThrottledUpstreamBacksOff(t *testing.T) {
	p := newPKI(t, "Test CA")
	var refusals atomic.Int32
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(),
		RefuseMail: func(string) *smtp.SMTPError {
			if refusals.Add(1) == 1 {
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many connections, try again later"}
			}
			return nil
		}})
	// A back-off long enough that the second message surely meets it.
	cfg := strings.Replace(baseConfig(t.TempDir()), `retry_min = "50ms"`, `retry_min = "2s"`, 1)
	cfg = strings.Replace(cfg, `retry_max = "200ms"`, `retry_max = "4s"`, 1)
	tr := startRelay(t, cfg+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))

	submitMany(t, tr.Addr().String(), 1, 1, []string{"rcpt@example.test"})
	eventually(t, 5*time.Second, "the first message throttled", func() bool {
		return strings.Contains(tr.logs.String(), "upstream throttles; backing off")
	})
	// With its only upstream backing off the destination is down: the
	// next message waits with it, without the upstream being asked.
	submitMany(t, tr.Addr().String(), 1, 1, []string{"rcpt@example.test"})
	eventually(t, 5*time.Second, "the second message waiting for the destination", func() bool {
		tr.queue.mu.Lock()
		defer tr.queue.mu.Unlock()
		for _, it := range tr.queue.items {
			if it.parked == "example.test" {
				return true
			}
		}
		return false
	})
	if !strings.Contains(tr.logs.String(), "destination down") {
		t.Errorf("the log does not say the destination is down:\n%s", tr.logs.String())
	}
	if n := refusals.Load(); n != 1 {
		t.Errorf("the upstream was asked %d times while it was backed off, want 1", n)
	}
	if !up.Wait(2, 15*time.Second) {
		t.Fatalf("upstream got %d of 2 once the back-off ended", up.Count())
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
}

// TestThrottleReplies: which replies are throttling, and the wait they
// name.
func TestThrottleReplies(t *testing.T) {
	for _, tc := range []struct {
		code  int
		enh   smtp.EnhancedCode
		text  string
		ok    bool
		named time.Duration
	}{
		{421, smtp.EnhancedCode{4, 3, 0}, "service not available", true, 0},
		{451, smtp.EnhancedCode{4, 7, 1}, "sending rate exceeded; try again in 30 seconds", true, 30 * time.Second},
		{452, smtp.EnhancedCode{4, 3, 2}, "system not accepting network messages", true, 0},
		{450, smtp.EnhancedCode{4, 2, 0}, "Rate limit reached, wait 5 minutes", true, 5 * time.Minute},
		{451, smtp.EnhancedCode{4, 3, 0}, "local error in processing", false, 0},
		{450, smtp.EnhancedCode{4, 2, 1}, "mailbox busy", false, 0},
		{451, smtp.EnhancedCode{4, 7, 1}, "greylisted, try later", false, 0},
	} {
		f := &policy.Failure{Class: policy.UpstreamTemporary, Err: &smtp.SMTPError{Code: tc.code, EnhancedCode: tc.enh, Message: tc.text}}
		named, ok := throttleOf(f)
		if ok != tc.ok || named != tc.named {
			t.Errorf("%d %v %q: throttle %v after %v, want %v after %v", tc.code, tc.enh, tc.text, ok, named, tc.ok, tc.named)
		}
	}
}

// TestThrottleMidDialogue: a 421 in the middle of the dialogue — to a
// RCPT, or to the end of the data — closes the session (RFC 5321 4.2.3):
// it is the hop throttling, not an answer about one recipient. The hop is
// backed off as a whole and the message goes by the next hop at once.
func TestThrottleMidDialogue(t *testing.T) {
	busy := &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many concurrent sessions, try again later"}
	for _, tc := range []struct {
		stage string
		opts  sink.Options
	}{
		{"RCPT TO", sink.Options{Refuse: func(string) *smtp.SMTPError { return busy }}},
		{"end of data", sink.Options{RefuseData: func() *smtp.SMTPError { return busy }}},
	} {
		t.Run(tc.stage, func(t *testing.T) {
			p := newPKI(t, "Test CA")
			tc.opts.Cert = p.leaf(t, "mx.example.test").TLSCertificate()
			primary := startSink(t, tc.opts)
			secondary := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
			tr := startRelay(t, baseConfig(t.TempDir())+
				strings.Replace(destination("example.test", primary.Addr(), p.caFile, "mx.example.test"),
					`upstream = "`+primary.Addr()+`"`, `upstream = ["`+primary.Addr()+`", "`+secondary.Addr()+`"]`, 1))
			if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, testBody); err != nil {
				t.Fatal(err)
			}
			if !secondary.Wait(1, 10*time.Second) {
				t.Fatalf("the secondary got nothing: a 421 at %s did not move the attempt to the next hop", tc.stage)
			}
			logs := tr.logs.String()
			if !strings.Contains(logs, "upstream throttles; backing off") || !strings.Contains(logs, "with 421") {
				t.Errorf("a 421 at %s was not taken as throttling of the hop:\n%s", tc.stage, logs)
			}
			eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
		})
	}
}
