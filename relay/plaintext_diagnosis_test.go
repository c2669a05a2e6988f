package relay

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

// TestPlaintextPhaseFailuresAreNamed: what goes wrong before STARTTLS
// reaches the client (reject mode) under its true class: a greeting cut
// off by connect_timeout is a connect failure, a garbled reply to
// STARTTLS a protocol failure, and only a 4xx/5xx to STARTTLS is
// starttls_missing.
func TestPlaintextPhaseFailuresAreNamed(t *testing.T) {
	p := newPKI(t, "Test CA")
	upTo := func(then func(*sink.RawConn)) func(*sink.RawConn) {
		return func(c *sink.RawConn) {
			c.Say("220 mx.example.test ESMTP\r\n")
			c.Line()
			c.Say("250-mx.example.test\r\n250 STARTTLS\r\n")
			if l, _ := c.Line(); l == "STARTTLS" {
				then(c)
			}
		}
	}
	// The first case must be the one that times out (see below).
	cases := []struct {
		script func(*sink.RawConn)
		code   int
		says   []string
	}{
		{func(c *sink.RawConn) { c.Say("220 mx.example.test ESM") }, 451,
			[]string{"failure=connect:", "accepted the connection but sent no complete greeting within connect_timeout"}},
		{upTo(func(c *sink.RawConn) { c.Say("HELLO?\r\n") }), 451,
			[]string{"failure=protocol:", "reply to STARTTLS is not an SMTP reply"}},
		{upTo(func(c *sink.RawConn) { c.Say("454 4.7.0 TLS not available\r\n") }), 554,
			[]string{"tls_failure=starttls_missing:", "refused STARTTLS: 454"}},
		{upTo(func(c *sink.RawConn) { c.Say("220 " + strings.Repeat("x", 1<<20)) }), 451,
			[]string{"failure=protocol:", "too long"}},
	}
	// The greeting that times out gets a relay with a short
	// connect_timeout; the others the usual one, so that a loaded machine
	// cannot turn them into timeouts.
	short := strings.Replace(baseConfig(t.TempDir()), `connect_timeout = "5s"`, `connect_timeout = "1s"`, 1)
	usual := baseConfig(t.TempDir())
	for i, c := range cases {
		up, err := sink.StartRaw(c.script)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { up.Close() })
		dest := destination(domainFor(i), up.Addr(), p.caFile, "mx.example.test", `on_failure = "reject"`)
		if i == 0 {
			short += dest
		} else {
			usual += dest
		}
	}
	relays := []*testRelay{startRelay(t, short), startRelay(t, usual)}
	for i, c := range cases {
		_, err := submit(relays[min(i, 1)].Addr().String(), "app@sender.test", []string{"a@" + domainFor(i)}, testBody)
		se, ok := err.(*smtp.SMTPError)
		if !ok || se.Code != c.code {
			t.Errorf("case %d: got %v, want %d", i, err, c.code)
			continue
		}
		for _, s := range c.says {
			if !strings.Contains(se.Message, s) {
				t.Errorf("case %d: reply does not say %q: %s", i, s, se.Message)
			}
		}
	}
}
