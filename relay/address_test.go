package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

// addressRelay is a relay whose only destination, example.test, is a
// sink that records the MAIL and RCPT lines it receives.
func addressRelay(t *testing.T, o sink.Options, extra ...string) (*testRelay, *sink.Sink) {
	t.Helper()
	p := newPKI(t, "Test CA")
	o.Cert, o.RecordCommands = p.leaf(t, "mx.example.test").TLSCertificate(), true
	up := startSink(t, o)
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test", extra...))
	return tr, up
}

// sendRaw runs one transaction over a raw session: each RCPT is answered
// with the code given, and the message goes only if one was accepted. It
// returns the reply to the end of data ("" when no recipient was taken).
func sendRaw(t *testing.T, s *rawSession, mail string, rcpts map[string]string) string {
	t.Helper()
	if r := s.cmd(mail); !strings.HasPrefix(r, "250") {
		t.Fatalf("%s: %q", mail, r)
	}
	accepted := false
	for cmd, want := range rcpts {
		r := s.cmd(cmd)
		if !strings.HasPrefix(r, want) {
			t.Errorf("%q: got %q, want %s", cmd, r, want)
		}
		accepted = accepted || strings.HasPrefix(r, "250")
	}
	if !accepted {
		s.cmd("RSET")
		return ""
	}
	if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %q", r)
	}
	return s.cmd(strings.TrimSuffix(testBody, "\r\n") + "\r\n.")
}

// TestEnvelopeAddressesAreParsed: the example (a quoted local part
// that carries a second address and a parameter) is refused at RCPT, as
// are the other routing forms and malformed addresses; what is accepted
// reaches the upstream re-serialized from its parsed form, byte for byte.
func TestEnvelopeAddressesAreParsed(t *testing.T) {
	tr, up := addressRelay(t, sink.Options{})
	s := dialRaw(t, tr.Addr().String())
	s.cmd("EHLO app.test")

	// Nothing of these may be queued: the transaction has no recipient.
	reply := sendRaw(t, s, "MAIL FROM:<app@sender.test>", map[string]string{
		`RCPT TO:<"victim@evil.example> ORCPT=rfc822;x"@example.test>`: "553 5.1.3",
		`RCPT TO:<"victim@evil.example"@example.test>`:                 "553 5.1.3",
		`RCPT TO:<victim@evil.example@example.test>`:                   "553 5.1.3",
		`RCPT TO:<victim%evil.example@example.test>`:                   "553 5.1.3",
		`RCPT TO:<"victim%evil.example"@example.test>`:                 "553 5.1.3",
		`RCPT TO:<evil.example!victim@example.test>`:                   "553 5.1.3",
		`RCPT TO:<"a,b"@example.test>`:                                 "553 5.1.3",
		`RCPT TO:<a..b@example.test>`:                                  "501 5.1.3",
		`RCPT TO:<.a@example.test>`:                                    "501 5.1.3",
		`RCPT TO:<"a."@example.test>`:                                  "501 5.1.3",
		`RCPT TO:<a@example.test..>`:                                   "501 5.1.3",
		`RCPT TO:<a@exa_mple.test>`:                                    "501 5.1.3",
		`RCPT TO:<a@[192.0.2.1]>`:                                      "550 5.7.1",
		"RCPT TO:<us\xffer@example.test>":                              "553 5.6.7",
		"RCPT TO:<us\x01er@example.test>":                              "501 5.5.2",
		"RCPT TO:<" + strings.Repeat("x", 250) + "@example.test>":      "501 5.1.3",
	})
	if reply != "" {
		t.Fatalf("a transaction with only refused recipients was answered %q", reply)
	}
	if r := s.cmd(`MAIL FROM:<"app@evil.example> X=Y"@sender.test>`); !strings.HasPrefix(r, "553 5.1.7") {
		t.Fatalf("sender with a second address in its quoted local part: %q, want 553 5.1.7", r)
	}

	// Accepted, and normalized: the upstream gets the canonical form.
	reply = sendRaw(t, s, `MAIL FROM:<"john doe"@Sender.TEST.>`, map[string]string{
		`RCPT TO:<"john doe"@example.com.example.test>`: "550 5.7.1", // routed on the parsed domain
		`RCPT TO:<"jane doe"@example.test>`:             "250",
		`RCPT TO:<"plain"@Example.TEST.>`:               "250",
		`RCPT TO:<"q\"uote\\d"@example.test>`:           "250",
		`RCPT TO:<a/b@example.test>`:                    "250",
	})
	if !strings.HasPrefix(reply, "250") {
		t.Fatalf("end of data: %q", reply)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	got := up.Commands()
	want := map[string]bool{
		`MAIL FROM:<"john doe"@sender.test> BODY=8BITMIME`: true,
		`RCPT TO:<"jane doe"@example.test>`:                true,
		`RCPT TO:<plain@example.test>`:                     true,
		`RCPT TO:<"q\"uote\\d"@example.test>`:              true,
		`RCPT TO:<a/b@example.test>`:                       true,
	}
	if len(got) != len(want) {
		t.Fatalf("upstream received %q, want the %d lines %v", got, len(want), want)
	}
	for _, l := range got {
		if !want[l] {
			t.Errorf("upstream received %q, not one of %v", l, want)
		}
	}
}

// TestSenderPatternsUseTheParsedAddress: a user restricted to
// *@sender.test cannot pass another sender off in a quoted local part
// that ends in @sender.test, and '*' matches a '/' in a local part.
func TestSenderPatternsUseTheParsedAddress(t *testing.T) {
	f := startFrontDoor(t, "")
	c, err := smtp.Dial(f.relay.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", "alice-password")); err != nil {
		t.Fatal(err)
	}
	s := dialRaw(t, f.relay.Addr().String())
	s.cmd("EHLO app.test")
	s.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXBhc3N3b3Jk") // \0alice\0alice-password
	for _, bypass := range []string{
		`MAIL FROM:<"ceo@evil.example> X"@sender.test>`,
		`MAIL FROM:<"ceo@evil.example"@sender.test>`,
		`MAIL FROM:<ceo@evil.example@sender.test>`,
	} {
		if r := s.cmd(bypass); !strings.HasPrefix(r, "553") {
			t.Errorf("%s: %q, want 553", bypass, r)
		}
	}
	if err := c.SendMail("team/ops@sender.test", []string{"rcpt@example.test"}, strings.NewReader(testBody)); err != nil {
		t.Fatalf("'*' must match a local part with '/': %v", err)
	}
	if !f.up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if m := f.up.Messages(); len(m) != 1 || m[0].From != "team/ops@sender.test" {
		t.Fatalf("upstream received %+v", m)
	}
}

// TestSMTPUTF8 both ways: the relay offers SMTPUTF8; a non-ASCII address
// goes upstream with SMTPUTF8 to an upstream that offers it; to one that
// does not, it is refused with its own reason and never sent bare. Invalid
// UTF-8 is refused even under SMTPUTF8.
func TestSMTPUTF8(t *testing.T) {
	t.Run("upstream offers it", func(t *testing.T) {
		tr, up := addressRelay(t, sink.Options{SMTPUTF8: true})
		s := dialRaw(t, tr.Addr().String())
		if r := s.cmd("EHLO app.test"); !strings.Contains(r, "SMTPUTF8") {
			t.Fatalf("EHLO does not offer SMTPUTF8: %q", r)
		}
		if r := s.cmd("MAIL FROM:<ünï@sender.test>"); !strings.HasPrefix(r, "553 5.6.7") {
			t.Fatalf("non-ASCII sender without SMTPUTF8: %q", r)
		}
		if r := sendRaw(t, s, "MAIL FROM:<app@sender.test> SMTPUTF8", map[string]string{
			"RCPT TO:<us\xffer@example.test>": "501 5.1.3",
			"RCPT TO:<a@bücher.test>":         "553 5.6.7",
		}); r != "" {
			t.Fatalf("refused recipients only, answered %q", r)
		}
		reply := sendRaw(t, s, "MAIL FROM:<ünï@sender.test> SMTPUTF8", map[string]string{
			"RCPT TO:<ëxample@example.test>": "250",
		})
		if !strings.HasPrefix(reply, "250") {
			t.Fatalf("end of data: %q", reply)
		}
		if !up.Wait(1, 10*time.Second) {
			t.Fatal("not delivered")
		}
		want := "MAIL FROM:<ünï@sender.test> BODY=8BITMIME SMTPUTF8|RCPT TO:<ëxample@example.test>"
		if got := strings.Join(up.Commands(), "|"); got != want {
			t.Fatalf("upstream received %q, want %q", got, want)
		}
		if m := up.Messages(); !m[0].UTF8 {
			t.Fatal("the upstream's transaction is not SMTPUTF8")
		}
	})
	t.Run("upstream does not offer it", func(t *testing.T) {
		tr, up := addressRelay(t, sink.Options{}, `on_failure = "reject"`)
		s := dialRaw(t, tr.Addr().String())
		s.cmd("EHLO app.test")
		reply := sendRaw(t, s, "MAIL FROM:<app@sender.test> SMTPUTF8", map[string]string{
			"RCPT TO:<ëxample@example.test>": "250",
		})
		if !strings.HasPrefix(reply, "5") || !strings.Contains(reply, "does not offer SMTPUTF8") {
			t.Fatalf("non-ASCII recipient for an upstream without SMTPUTF8: %q, want a 5xx naming SMTPUTF8", reply)
		}
		if got := up.Commands(); len(got) != 0 {
			t.Fatalf("the upstream received %q", got)
		}
		// An ASCII envelope submitted with SMTPUTF8 still goes.
		reply = sendRaw(t, s, "MAIL FROM:<app@sender.test> SMTPUTF8", map[string]string{"RCPT TO:<plain@example.test>": "250"})
		if !strings.HasPrefix(reply, "250") {
			t.Fatalf("ASCII envelope: %q", reply)
		}
		if got := strings.Join(up.Commands(), "|"); got != "MAIL FROM:<app@sender.test> BODY=8BITMIME|RCPT TO:<plain@example.test>" {
			t.Fatalf("upstream received %q", got)
		}
	})
}
