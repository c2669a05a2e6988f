package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/sink"
)

// rawUpstream starts a sink.Raw running script and a STARTTLS destination
// pointing at it.
func rawUpstream(t *testing.T, script func(*sink.RawConn)) *policy.Destination {
	t.Helper()
	up, err := sink.StartRaw(script)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	caFile, _ := serverCert(t, "mx.example.test")
	dest, err := policy.Compile(policy.Spec{Domains: []string{"example.test"}, Upstream: up.Addr(), TLS: "starttls",
		CAFile: caFile, ServerName: "mx.example.test", RequireHostname: []string{"mx.example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	return dest
}

// upTo plays a well-behaved server up to the step named, then calls then.
// step is "greeting" (then replaces the greeting), "EHLO" (then answers
// EHLO) or "STARTTLS" (then answers STARTTLS).
func upTo(step string, then func(*sink.RawConn)) func(*sink.RawConn) {
	return func(c *sink.RawConn) {
		if step == "greeting" {
			then(c)
			return
		}
		c.Say("220 mx.example.test ESMTP\r\n")
		if l, _ := c.Line(); !strings.HasPrefix(l, "EHLO ") {
			return
		}
		if step == "EHLO" {
			then(c)
			return
		}
		c.Say("250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
		if l, _ := c.Line(); l != "STARTTLS" {
			return
		}
		then(c)
	}
}

func say(s string) func(*sink.RawConn) { return func(c *sink.RawConn) { c.Say(s) } }

// dialFailureOf dials dest and returns its failure, which must be one.
func dialFailureOf(t *testing.T, dest *policy.Destination, timeout time.Duration) *policy.Failure {
	t.Helper()
	d := &Dialer{LocalName: "relay.test", Timeout: timeout}
	conn, err := d.Dial(context.Background(), dest)
	if err == nil {
		conn.Close()
		t.Fatal("the dial succeeded")
	}
	f, ok := policy.AsFailure(err)
	if !ok {
		t.Fatalf("not a *policy.Failure: %v", err)
	}
	if f.Host != dest.Upstream || f.Fix == "" {
		t.Errorf("the failure does not name the upstream or has no fix: %+v", f)
	}
	return f
}

// TestPlaintextPhaseIsBounded: before STARTTLS, whatever is on the path
// writes what the relay reads. Every line, every reply and the EHLO
// keywords are bounded there as after TLS, and going over a bound is a
// protocol failure.
func TestPlaintextPhaseIsBounded(t *testing.T) {
	// endless writes 64 MiB without a line ending, if anyone reads it.
	endless := func(c *sink.RawConn) {
		chunk := strings.Repeat("x", 64<<10)
		for range 1024 {
			if c.Say(chunk) != nil {
				return
			}
		}
	}
	lines := func(code string, n, size int) string {
		return strings.Repeat(code+"-"+strings.Repeat("y", size)+"\r\n", n) + code + " end\r\n"
	}
	manyKeywords := "250-mx.example.test\r\n"
	for i := range 200 {
		manyKeywords += fmt.Sprintf("250-X-KEYWORD-%d\r\n", i)
	}
	manyKeywords += "250 STARTTLS\r\n"
	for _, c := range []struct {
		name   string
		script func(*sink.RawConn)
		bound  error
	}{
		{"a 64 MiB greeting line", upTo("greeting", func(c *sink.RawConn) { c.Say("220 "); endless(c) }), errReplyOverLine},
		{"a greeting of 10000 lines", upTo("greeting", say(lines("220", 10000, 10))), errReplyOverLines},
		{"a greeting of 80 KiB", upTo("greeting", say(lines("220", 80, 1000))), errReplyOverBytes},
		{"200 EHLO keywords", upTo("EHLO", say(manyKeywords)), errReplyOverLines},
		{"an endless EHLO reply", upTo("EHLO", func(c *sink.RawConn) { c.Say("250-"); endless(c) }), errReplyOverLine},
		{"an endless STARTTLS reply", upTo("STARTTLS", func(c *sink.RawConn) { c.Say("220 "); endless(c) }), errReplyOverLine},
		{"a STARTTLS reply of 80 KiB", upTo("STARTTLS", say(lines("220", 80, 1000))), errReplyOverBytes},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := dialFailureOf(t, rawUpstream(t, c.script), 10*time.Second)
			if f.Class != policy.Protocol || !errors.Is(f.Err, c.bound) || !strings.Contains(f.Detail, "too long") {
				t.Fatalf("got %s: %s (err %v), want protocol with %v", f.Class, f.Detail, f.Err, c.bound)
			}
		})
	}
}

// TestEHLOKeywordsAreBoundedAfterTLS: the same bound holds over TLS.
func TestEHLOKeywordsAreBoundedAfterTLS(t *testing.T) {
	var ext []string
	for i := range 200 {
		ext = append(ext, fmt.Sprintf("X-KEYWORD-%d", i))
	}
	_, dest := startScripted(t, ext...)
	d := &Dialer{LocalName: "relay.test", Timeout: 10 * time.Second}
	conn, err := d.Dial(context.Background(), dest)
	if err == nil {
		conn.Close()
		t.Fatal("an EHLO reply of 200 keywords was accepted")
	}
	if f, _ := policy.AsFailure(err); f == nil || f.Class != policy.Protocol || !errors.Is(err, errReplyOverLines) {
		t.Fatalf("got %v, want a protocol failure for too many lines", err)
	}
	// A usual number of keywords is fine.
	_, dest = startScripted(t, ext[:30]...)
	dial(t, dest).Close()
}

// TestPlaintextPhaseDiagnosis: each way the plaintext part of STARTTLS
// can fail gets its own class and words. A reply cut off by the timeout
// is never taken as complete, and only a 4xx/5xx to STARTTLS is a refusal.
func TestPlaintextPhaseDiagnosis(t *testing.T) {
	hang := func(*sink.RawConn) {}
	closeNow := func(c *sink.RawConn) { c.Close() }
	for _, c := range []struct {
		name   string
		script func(*sink.RawConn)
		class  policy.Class
		says   string
	}{
		{"a silent server", upTo("greeting", hang), policy.Connect, "accepted the connection but sent no complete greeting within connect_timeout"},
		{"a greeting cut off by the timeout", upTo("greeting", say("220 mx.example.test ESM")), policy.Connect, "accepted the connection but sent no complete greeting within connect_timeout"},
		{"a multi-line greeting cut off", upTo("greeting", say("220-mx.example.test\r\n")), policy.Connect, "no complete greeting"},
		{"a greeting cut off by a close", upTo("greeting", func(c *sink.RawConn) { c.Say("220 mx.exa"); c.Close() }), policy.Connect, "broke before the server's greeting was complete"},
		{"a greeting that is not SMTP", upTo("greeting", say("SSH-2.0-OpenSSH_9.6\r\n")), policy.Protocol, "not an SMTP reply"},
		{"a 554 greeting", upTo("greeting", say("554 5.3.2 no service\r\n")), policy.UpstreamPermanent, "before TLS"},
		{"a 421 greeting", upTo("greeting", say("421 4.3.2 busy\r\n")), policy.UpstreamTemporary, "421"},
		{"no EHLO reply", upTo("EHLO", hang), policy.Connect, "no complete reply to EHLO within connect_timeout"},
		{"a 500 to EHLO", upTo("EHLO", say("500 5.5.1 what?\r\n")), policy.UpstreamPermanent, "before TLS"},
		{"STARTTLS refused", upTo("STARTTLS", say("454 4.7.0 TLS not available\r\n")), policy.StartTLSMissing, "refused STARTTLS: 454"},
		{"STARTTLS refused for good", upTo("STARTTLS", say("502 5.5.1 not implemented\r\n")), policy.StartTLSMissing, "refused STARTTLS: 502"},
		{"no reply to STARTTLS", upTo("STARTTLS", hang), policy.Connect, "no complete reply to STARTTLS within connect_timeout"},
		{"a STARTTLS reply cut off", upTo("STARTTLS", say("220 2.0.0 Re")), policy.Connect, "no complete reply to STARTTLS"},
		{"a garbled STARTTLS reply", upTo("STARTTLS", say("HELLO?\r\n")), policy.Protocol, "reply to STARTTLS is not an SMTP reply"},
		{"a 250 to STARTTLS", upTo("STARTTLS", say("250 2.0.0 sure\r\n")), policy.Protocol, "answered STARTTLS with 250"},
		{"a close after STARTTLS", upTo("STARTTLS", closeNow), policy.Connect, "connection broke at STARTTLS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// connect_timeout is short where it is what the case is about,
			// long where it must not fire on a loaded machine.
			timeout := 10 * time.Second
			if strings.Contains(c.says, "no complete") {
				timeout = 300 * time.Millisecond
			}
			f := dialFailureOf(t, rawUpstream(t, c.script), timeout)
			if f.Class != c.class || !strings.Contains(f.Detail, c.says) {
				t.Fatalf("got %s: %s, want %s saying %q", f.Class, f.Detail, c.class, c.says)
			}
			if f.Permanent {
				t.Fatalf("a failure before TLS is permanent: %v", f)
			}
		})
	}
}

// TestProbeOfARefusedSTARTTLS: `tlsrelay check` says the server offered
// STARTTLS (and refused it), not that it did not offer it.
func TestProbeOfARefusedSTARTTLS(t *testing.T) {
	dest := rawUpstream(t, upTo("STARTTLS", say("454 4.7.0 TLS not available\r\n")))
	d := &Dialer{LocalName: "relay.test", Timeout: 10 * time.Second}
	p := d.Probe(context.Background(), dest)
	if p.Failure == nil || p.Failure.Class != policy.StartTLSMissing || !p.StartTLSOffered || !p.Connected {
		t.Fatalf("probe: failure %v, offered %v, connected %v; want starttls_missing, offered, connected", p.Failure, p.StartTLSOffered, p.Connected)
	}
	if p.Greeting != "mx.example.test ESMTP" {
		t.Errorf("greeting %q", p.Greeting)
	}
}
