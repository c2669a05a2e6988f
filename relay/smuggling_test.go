package relay

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"tlsrelay/relay/sink"
)

// rawSession is an SMTP client that writes exactly the bytes it is given.
type rawSession struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawSession {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	s := &rawSession{t: t, c: c, r: bufio.NewReader(c)}
	s.reply() // greeting
	return s
}

// reply reads one (possibly multi-line) reply and returns it whole.
func (s *rawSession) reply() string {
	s.t.Helper()
	var all []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading reply: %v (so far %q)", err, all)
		}
		all = append(all, strings.TrimRight(line, "\r\n"))
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(all, "\n")
		}
	}
}

func (s *rawSession) send(raw string) { s.c.Write([]byte(raw)) }

// cmd sends one command line and returns the reply.
func (s *rawSession) cmd(line string) string {
	s.send(line + "\r\n")
	return s.reply()
}

// TestSmugglingIsRefused sends each published SMTP smuggling end-of-data
// variant with a second message hidden behind it. The relay must refuse
// the transaction (5xx), queue nothing of it, keep the session usable,
// and the upstream must never see a second message.
func TestSmugglingIsRefused(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))

	variants := map[string]string{
		`\n.\n`:    "\n.\n",
		`\n.\r\n`:  "\n.\r\n",
		`\r.\r\n`:  "\r.\r\n",
		`\r\n.\r`:  "\r\n.\r",
		`\r\n.\n`:  "\r\n.\n",
		`bare LF`:  "\nhidden\n",
		`bare CR`:  "\rhidden\r",
		`NUL`:      "\x00",
		`\r\n.\rX`: "\r\n.\rX",
	}
	delivered := 0
	for name, endMarker := range variants {
		s := dialRaw(t, tr.Addr().String())
		s.cmd("EHLO client.test")
		s.cmd("MAIL FROM:<app@sender.test>")
		s.cmd("RCPT TO:<honest@example.test>")
		if r := s.cmd("DATA"); !strings.HasPrefix(r, "354") {
			t.Fatalf("%s: DATA answered %q", name, r)
		}
		s.send("Subject: honest\r\n\r\nfirst" + endMarker +
			"MAIL FROM:<evil@sender.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
		r := s.reply()
		if !strings.HasPrefix(r, "5") {
			t.Errorf("%s: transaction answered %q, want a 5xx refusal", name, r)
		}
		// The session stays usable for an honest message.
		s.cmd("MAIL FROM:<app@sender.test>")
		s.cmd("RCPT TO:<honest@example.test>")
		s.cmd("DATA")
		s.send("Subject: clean after " + strings.ReplaceAll(name, "\\", "") + "\r\n\r\nok\r\n.\r\n")
		if r := s.reply(); !strings.HasPrefix(r, "250") {
			t.Errorf("%s: clean message after the refusal answered %q", name, r)
		} else {
			delivered++
		}
		s.cmd("QUIT")
	}
	if !up.Wait(delivered, 10*time.Second) {
		t.Fatalf("upstream got %d messages, want %d", up.Count(), delivered)
	}
	time.Sleep(200 * time.Millisecond)
	for _, m := range up.Messages() {
		body := string(m.Data)
		if strings.Contains(body, "smuggled") || strings.Contains(body, "evil") || len(m.To) != 1 || m.To[0] != "honest@example.test" {
			t.Errorf("upstream received smuggled content: to %v\n%q", m.To, body)
		}
		if !strings.HasPrefix(body, "Subject: clean after ") {
			t.Errorf("upstream received a refused message: %q", body)
		}
	}
	if up.Count() != delivered {
		t.Errorf("upstream got %d messages, want %d", up.Count(), delivered)
	}
}

// TestCommandLineDiscipline checks the envelope side: line breaks, NULs
// and non-ASCII in addresses, and over-long lines.
func TestCommandLineDiscipline(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))
	s := dialRaw(t, tr.Addr().String())
	s.cmd("EHLO client.test")
	for _, c := range []struct{ line, want string }{
		{"MAIL FROM:<a@sender.test>\nRCPT TO:<x@example.test>", "5"},
		{"MAIL FROM:<a@sen\x00der.test>", "5"},
		{"MAIL FROM:<a@sender.test>\rRCPT TO:<x@example.test>", "5"},
		{"MAIL FROM:<\xc3\xa9@sender.test>", "553 5.6.7"},
		{"MAIL FROM:<a@sender.test>", "250"},
		{"RCPT TO:<b@exam\x00ple.test>", "5"},
		{"RCPT TO:<\xc3\xa9@example.test>", "553 5.6.7"},
		{"RCPT TO:<b@example.test>", "250"},
		{"RSET", "250"},
	} {
		if r := s.cmd(c.line); !strings.HasPrefix(r, c.want) {
			t.Errorf("%q answered %q, want %s", c.line, r, c.want)
		}
	}
	if r := s.cmd("NOOP " + strings.Repeat("x", 3000)); !strings.HasPrefix(r, "500") {
		t.Errorf("over-long line answered %q, want 500", r)
	}
}
