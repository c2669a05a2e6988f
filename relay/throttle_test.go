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
			if refusals.Add(1) <= 2 {
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many connections, try again later"}
			}
			return nil
		}})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	submitMany(t, tr.Addr().String(), 1, 4, []string{"rcpt@example.test"})
	if !up.Wait(4, 15*time.Second) {
		t.Fatalf("upstream got %d of 4", up.Count())
	}
	eventually(t, 5*time.Second, "queue empty", func() bool { return tr.QueueSize() == 0 })
	logs := tr.logs.String()
	for _, want := range []string{"upstream throttles; backing off", "the upstream throttles; backing off"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
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
