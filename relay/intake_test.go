package relay

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"tlsrelay/relay/sink"
)

// largeBody is a message of about size bytes as it must reach the
// upstream, with the lines that dot-stuffing and the line discipline
// care about: lines that start with a dot or two, empty lines, a line
// of just "..", lines of 1998 bytes (the longest allowed: 2000 with the
// CRLF), 8-bit text.
func largeBody(size int) string {
	var b strings.Builder
	b.WriteString("From: app@sender.test\r\nTo: rcpt@example.test\r\nSubject: large\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		switch i % 7 {
		case 0:
			b.WriteString(".starts with a dot\r\n")
		case 1:
			b.WriteString("..\r\n")
		case 2:
			b.WriteString("\r\n")
		case 3:
			b.WriteString(strings.Repeat("L", 1998) + "\r\n")
		case 4:
			b.WriteString("\xc3\xa9t\xc3\xa9 . \r\n")
		default:
			fmt.Fprintf(&b, "line %d: the quick brown fox jumps over the lazy dog\r\n", i)
		}
	}
	return b.String()
}

// stuff dot-stuffs a body for DATA.
func stuff(body string) string {
	s := strings.ReplaceAll(body, "\r\n.", "\r\n..")
	if strings.HasPrefix(s, ".") {
		s = "." + s
	}
	return s
}

// TestLargeMessagesRelayedByteForByte sends large messages with DATA in
// writes split where a read boundary is hardest on the intake — right
// after a line-initial dot, between CR and LF, inside the terminator —
// with the next transaction pipelined right behind the end of data, and
// checks that the upstream receives every message exactly as meant.
func TestLargeMessagesRelayedByteForByte(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	cfg := strings.Replace(baseConfig(t.TempDir()), "max_message_bytes = 100000", "max_message_bytes = 4000000", 1)
	tr := startRelay(t, cfg+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))

	s := dialRaw(t, tr.Addr().String())
	s.cmd("EHLO client.test")
	bodies := []string{largeBody(1 << 20), ".first line dotted\r\n" + largeBody(200<<10), largeBody(3 << 20)}
	for i, body := range bodies {
		wire := stuff(body) + ".\r\n"
		// Split points: after the n-th line-initial dot, between a CR and
		// its LF, and inside the terminator.
		var cuts []int
		for _, marker := range []string{"\r\n..", "\r\n.s", "\r\n\r\n"} {
			if k := strings.Index(wire[len(wire)/3:], marker); k >= 0 {
				cuts = append(cuts, len(wire)/3+k+3, len(wire)/3+k+1)
			}
		}
		cuts = append(cuts, len(wire)-1, len(wire)-2, len(wire)-4)
		if i == 0 {
			s.cmd("MAIL FROM:<app@sender.test>")
			s.cmd("RCPT TO:<rcpt@example.test>")
			if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
				t.Fatalf("DATA answered %q", r)
			}
		}
		next := "MAIL FROM:<app@sender.test>\r\nRCPT TO:<rcpt@example.test>\r\nDATA\r\n"
		if i == len(bodies)-1 {
			next = "QUIT\r\n"
		}
		sendInPieces(s, wire+next, cuts)
		if r := s.reply(); !strings.HasPrefix(r, "250") {
			t.Fatalf("message %d answered %q", i, r)
		}
		if i < len(bodies)-1 {
			for _, want := range []string{"250", "250", "354"} {
				if r := s.reply(); !strings.HasPrefix(r, want) {
					t.Fatalf("after message %d: %q, want %s", i, r, want)
				}
			}
		}
	}
	if !up.Wait(len(bodies), 20*time.Second) {
		t.Fatalf("upstream got %d of %d messages", up.Count(), len(bodies))
	}
	got := map[int]bool{}
	for _, m := range up.Messages() {
		for i, body := range bodies {
			if bytes.Equal(m.Data, []byte(body)) {
				got[i] = true
			}
		}
	}
	for i, body := range bodies {
		if !got[i] {
			t.Errorf("message %d (%d bytes) did not arrive byte for byte", i, len(body))
		}
	}
	if t.Failed() {
		for _, m := range up.Messages() {
			t.Logf("upstream received %d bytes", len(m.Data))
		}
	}
}

// sendInPieces writes raw in pieces cut at the given offsets, pausing
// between them so that the relay reads them apart.
func sendInPieces(s *rawSession, raw string, cuts []int) {
	last := 0
	for _, c := range sortedInts(cuts) {
		if c <= last || c >= len(raw) {
			continue
		}
		s.send(raw[last:c])
		time.Sleep(5 * time.Millisecond)
		last = c
	}
	s.send(raw[last:])
}

func sortedInts(v []int) []int {
	out := append([]int(nil), v...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestDataLimits: max_message_bytes bounds the data as received (a
// message of exactly that size is taken, one byte more gets 552 and the
// session goes on), and a line over 2000 bytes with its CRLF ends the
// session with 500 5.4.0.
func TestDataLimits(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	exactly := func(n int) string {
		line := strings.Repeat("x", 998) + "\r\n"
		body := strings.Repeat(line, n/len(line)-1)
		return body + strings.Repeat("y", n-len(body)-2) + "\r\n"
	}
	s := dialRaw(t, tr.Addr().String())
	s.cmd("EHLO client.test")
	for _, c := range []struct {
		body, want string
	}{
		{exactly(100001), "552 5.3.4"},
		{exactly(100000), "250"},
		{"Subject: long\r\n\r\n" + strings.Repeat("z", 1998) + "\r\n", "250"},
	} {
		s.cmd("MAIL FROM:<app@sender.test>")
		s.cmd("RCPT TO:<rcpt@example.test>")
		s.cmd("DATA")
		s.send(stuff(c.body) + ".\r\n")
		if r := s.reply(); !strings.HasPrefix(r, c.want) {
			t.Errorf("%d bytes answered %q, want %s", len(c.body), r, c.want)
		}
	}
	if !up.Wait(2, 10*time.Second) {
		t.Fatalf("upstream got %d messages, want 2", up.Count())
	}
	s.cmd("MAIL FROM:<app@sender.test>")
	s.cmd("RCPT TO:<rcpt@example.test>")
	s.cmd("DATA")
	s.send("Subject: too long\r\n\r\n" + strings.Repeat("z", 1999) + "\r\n.\r\nNOOP\r\n")
	if r := s.reply(); !strings.HasPrefix(r, "500 5.4.0") {
		t.Errorf("a line of 2001 bytes answered %q, want 500 5.4.0", r)
	}
	if r := s.reply(); !strings.HasPrefix(r, "500 5.4.0") {
		t.Errorf("then %q, want the session closed with 500 5.4.0", r)
	}
	if line, err := s.r.ReadString('\n'); err == nil {
		t.Errorf("the session went on: %q", line)
	}
	time.Sleep(100 * time.Millisecond)
	if up.Count() != 2 {
		t.Errorf("upstream got %d messages, want 2", up.Count())
	}
}
