package relay

import (
	"bufio"
	"crypto/tls"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bareLFCommand is two commands joined by a bare LF: the line discipline
// makes it one invalid line (5xx); without it, go-smtp would take two.
const bareLFCommand = "MAIL FROM:<app@sender.test>\nRCPT TO:<victim@example.test>"

// TestFailedInboundHandshakeKeepsTheLineDiscipline: a client says
// STARTTLS and sends a TLS-looking byte, the handshake fails, and the
// session goes on in plaintext. The raw-stream guard must still be in
// place: commands and data with bare line endings are refused, nothing
// smuggled reaches the upstream. A real STARTTLS afterwards still works.
func TestFailedInboundHandshakeKeepsTheLineDiscipline(t *testing.T) {
	f := startFrontDoor(t, "")
	s := dialRaw(t, f.relay.Addr().String())
	s.cmd("EHLO client.test")
	if r := s.cmd("STARTTLS"); !strings.HasPrefix(r, "220") {
		t.Fatalf("STARTTLS answered %q", r)
	}
	s.send("\x16\x03\x01\x00\x04garbage\r\n") // a record that is no ClientHello
	if r := s.reply(); !strings.Contains(r, "550") {
		t.Fatalf("a failed handshake answered %q, want the 550 after the alert", r)
	}

	// The session is plaintext again, and disciplined.
	if r := s.cmd(bareLFCommand); !strings.HasPrefix(r, "5") {
		t.Fatalf("after a failed handshake, a bare LF in a command was answered %q, want 5xx", r)
	}
	s.cmd("MAIL FROM:<app@sender.test>")
	s.cmd("RCPT TO:<honest@example.test>")
	if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA answered %q", r)
	}
	s.send("Subject: honest\r\n\r\nfirst\n.\nMAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
	if r := s.reply(); !strings.HasPrefix(r, "5") {
		t.Errorf("after a failed handshake, a smuggling attempt was answered %q, want 5xx", r)
	}

	// A real STARTTLS on the same connection.
	if r := s.cmd("STARTTLS"); !strings.HasPrefix(r, "220") {
		t.Fatalf("second STARTTLS answered %q", r)
	}
	tc := tls.Client(s.c, f.tlsConfig())
	if err := tc.Handshake(); err != nil {
		t.Fatalf("a real handshake after a failed one: %v", err)
	}
	s = &rawSession{t: t, c: tc, r: bufio.NewReader(tc)}
	if r := s.cmd("EHLO client.test"); !strings.HasPrefix(r, "250") || strings.Contains(r, "STARTTLS") {
		t.Fatalf("EHLO over TLS answered %q", r)
	}
	s.cmd("MAIL FROM:<app@sender.test>")
	s.cmd("RCPT TO:<honest@example.test>")
	s.cmd("DATA")
	s.send("Subject: over TLS\r\n\r\nok\r\n.\r\n")
	if r := s.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("a message over TLS answered %q", r)
	}
	if !f.up.Wait(1, 10*time.Second) {
		t.Fatal("the message sent over TLS was not delivered")
	}
	time.Sleep(100 * time.Millisecond)
	for _, m := range f.up.Messages() {
		if body := string(m.Data); strings.Contains(body, "smuggled") || strings.Contains(body, "honest") {
			t.Errorf("upstream received a refused message: %q", body)
		}
	}
	if n := f.up.Count(); n != 1 {
		t.Errorf("upstream got %d messages, want 1", n)
	}
}

// TestSTARTTLSInsideAMessageIsData: a STARTTLS line and a TLS-looking byte
// inside DATA or a BDAT chunk are message data, and the guard stays on
// for what follows.
func TestSTARTTLSInsideAMessageIsData(t *testing.T) {
	f := startFrontDoor(t, "")
	for _, via := range []string{"DATA", "BDAT"} {
		s := dialRaw(t, f.relay.Addr().String())
		s.cmd("EHLO client.test")
		s.cmd("MAIL FROM:<app@sender.test>")
		s.cmd("RCPT TO:<honest@example.test>")
		if via == "DATA" {
			if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
				t.Fatalf("DATA answered %q", r)
			}
			s.send("Subject: x\r\n\r\nSTARTTLS\r\n\x16\x03\x01 tls-looking\r\n.\r\n")
			s.reply()
		} else {
			const chunk = "Subject: x\r\n\r\nSTARTTLS\r\n"
			s.send("BDAT " + strconv.Itoa(len(chunk)) + "\r\n" + chunk)
			if r := s.reply(); !strings.HasPrefix(r, "250") {
				t.Fatalf("BDAT answered %q", r)
			}
			s.cmd("\x16\x03\x01 tls-looking") // an unknown command
			s.cmd("RSET")
		}
		if r := s.cmd(bareLFCommand); !strings.HasPrefix(r, "5") {
			t.Errorf("after STARTTLS and a TLS byte inside %s, a bare LF in a command was answered %q, want 5xx", via, r)
		}
		s.cmd("QUIT")
	}
}
