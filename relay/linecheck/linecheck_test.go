package linecheck

import (
	"bytes"
	"io"
	"net"
	"testing"
	"testing/iotest"
)

// pipeConn is a net.Conn whose reads come from a fixed byte string, in
// reads as small as one byte, to exercise every split of CR and LF.
type pipeConn struct {
	net.Conn
	r io.Reader
}

func (p pipeConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func discipline(in []byte, oneByte bool) []byte { return disciplineOffering(in, oneByte, false) }

// disciplineOffering reads in through a Conn whose server offers
// STARTTLS or not, and never writes.
func disciplineOffering(in []byte, oneByte, startTLS bool) []byte {
	var r io.Reader = bytes.NewReader(in)
	if oneByte {
		r = iotest.OneByteReader(r)
	}
	out, _ := io.ReadAll(NewConn(pipeConn{r: r}, startTLS))
	return out
}

func TestConnReplacesBareLineEndings(t *testing.T) {
	for in, want := range map[string]string{
		"MAIL FROM:<a>\r\n":        "MAIL FROM:<a>\r\n",
		"a\nb\r\n":                 "a\x00b\r\n",
		"a\rb\r\n":                 "a\x00b\r\n",
		"\r\n.\r\n":                "\r\n.\r\n",
		"x\n.\n":                   "x\x00.\x00",
		"x\r\n.\rMAIL\r\n":         "x\r\n.\x00MAIL\r\n",
		"\r\r\n":                   "\x00\r\n",
		"\xc3\xa9 8bit ok\r\n\r\n": "\xc3\xa9 8bit ok\r\n\r\n",
	} {
		for _, one := range []bool{false, true} {
			if got := string(discipline([]byte(in), one)); got != want {
				t.Errorf("%q (one byte reads: %v) -> %q, want %q", in, one, got, want)
			}
		}
	}
}

// session drives a Conn as go-smtp does: client bytes fed in and read
// back through it, server replies written through it.
type session struct {
	t  *testing.T
	c  *Conn
	in *bytes.Buffer
}

// duplexConn reads what the test feeds and discards what is written.
type duplexConn struct {
	net.Conn
	in *bytes.Buffer
}

func (d duplexConn) Read(b []byte) (int, error)  { return d.in.Read(b) }
func (d duplexConn) Write(b []byte) (int, error) { return len(b), nil }

func newSession(t *testing.T, startTLS bool) *session {
	in := &bytes.Buffer{}
	s := &session{t: t, c: NewConn(duplexConn{in: in}, startTLS), in: in}
	s.server("220 relay.test ESMTP Service Ready\r\n")
	return s
}

// client feeds raw and returns what the server reads of it.
func (s *session) client(raw string) string {
	s.t.Helper()
	s.in.WriteString(raw)
	out := make([]byte, len(raw))
	if _, err := io.ReadFull(s.c, out); err != nil {
		s.t.Fatalf("reading %q: %v", raw, err)
	}
	return string(out)
}

func (s *session) server(reply string) { s.c.Write([]byte(reply)) }

// tlsLike is the start of a ClientHello with bare line endings after it.
const tlsLike = "\x16\x03\x01\x00\x05\n\r\x00raw"

func TestConnStepsAsideOnlyWhenTheServerStartsTLS(t *testing.T) {
	// A real STARTTLS: the server answers 220, TLS bytes pass untouched,
	// and so does what its TLS writes.
	s := newSession(t, true)
	s.client("EHLO x\r\n")
	s.server("250-relay.test\r\n250 STARTTLS\r\n")
	s.client("STARTTLS\r\n")
	s.server("220 2.0.0 Ready to start TLS\r\n")
	if got := s.client(tlsLike); got != tlsLike {
		t.Fatalf("TLS bytes were altered: %q", got)
	}
	s.server("\x16\x03\x03\x00\x7a") // ServerHello
	s.server("\x17\x03\x03\x00\x20") // application data
	if got := s.client("\x17\x03\x03\n\r"); got != "\x17\x03\x03\n\r" {
		t.Fatalf("TLS bytes were altered after the server's records: %q", got)
	}

	// STARTTLS followed by a TLS-looking byte, without the server's 220
	// (here: the client did not wait for it): the discipline holds.
	s = newSession(t, true)
	s.client("STARTTLS\r\n")
	if got := s.client(tlsLike); got == tlsLike {
		t.Fatalf("stepped aside without the server's 220: %q", got)
	}

	// A failed handshake: the server's TLS alert, then its plaintext 550;
	// from there the session is plaintext, and disciplined again.
	s = newSession(t, true)
	s.client("STARTTLS\r\n")
	s.server("220 2.0.0 Ready to start TLS\r\n")
	s.client("\x16\x03\x01\x00\x04garbage")
	s.server("\x15\x03\x03\x00\x02\x02\x32")
	s.server("550 5.0.0 Handshake error\r\n")
	if got := s.client("x\n.\nMAIL FROM:<evil@x>\r\n"); got != "x\x00.\x00MAIL FROM:<evil@x>\r\n" {
		t.Fatalf("after a failed handshake: %q, want the bare LFs replaced", got)
	}
	// ... and a second STARTTLS can still start TLS.
	s.client("STARTTLS\r\n")
	s.server("220 2.0.0 Ready to start TLS\r\n")
	if got := s.client(tlsLike); got != tlsLike {
		t.Fatalf("TLS bytes of a second STARTTLS were altered: %q", got)
	}

	// Inside DATA and BDAT a STARTTLS line and a TLS-looking byte are
	// data: the server writes no 220 there.
	// (Conn reads DATA's data itself: there it is refused, and the
	// server's 220 inside it changes nothing.)
	for _, open := range []struct{ cmd, reply string }{{"DATA\r\n", "354 Go ahead\r\n"}, {"BDAT 10\r\n", ""}} {
		s = newSession(t, true)
		s.client("MAIL FROM:<a@x>\r\n")
		s.server("250 2.0.0 Roger\r\n")
		s.client(open.cmd)
		s.server(open.reply)
		if open.cmd == "DATA\r\n" {
			s.in.WriteString("STARTTLS\r\n")
			d := s.c.DataReader(0)
			if d == nil {
				t.Fatal("DATA answered 354: no DataReader")
			}
			buf := make([]byte, 20)
			if n, err := io.ReadFull(d, buf[:10]); err != nil || string(buf[:n]) != "STARTTLS\r\n" {
				t.Fatalf("DATA: read %q, %v", buf[:n], err)
			}
			s.server("220 2.0.0 Ready to start TLS\r\n") // not something go-smtp does
			s.in.WriteString(tlsLike + "\r\n.\r\n")
			if _, err := io.ReadFull(d, buf); err != ErrBareLineEnding {
				t.Fatalf("DATA: TLS-looking data read with %v, want ErrBareLineEnding", err)
			}
			end := make([]byte, 3)
			if _, err := io.ReadFull(s.c, end); err != nil || string(end) != ".\r\n" {
				t.Fatalf("DATA: go-smtp was handed %q (%v), want the end of data", end, err)
			}
		} else {
			s.client("STARTTLS\r\n")
			if got := s.client(tlsLike); got == tlsLike {
				t.Fatalf("%s: stepped aside inside the message: %q", open.cmd, got)
			}
		}
		s.server("250 2.0.0 OK\r\n")
		if got := s.client("\n.\n"); got != "\x00.\x00" {
			t.Fatalf("%s: after the message: %q", open.cmd, got)
		}
	}

	// Without STARTTLS offered, nothing steps aside.
	s = newSession(t, false)
	s.client("STARTTLS\r\n")
	s.server("220 2.0.0 Ready to start TLS\r\n")
	if got := s.client(tlsLike); got == tlsLike {
		t.Fatalf("stepped aside although STARTTLS is not offered: %q", got)
	}
}

func hasBare(b []byte) bool {
	for i, c := range b {
		if c == 0 || c == '\n' && (i == 0 || b[i-1] != '\r') || c == '\r' && (i == len(b)-1 || b[i+1] != '\n') {
			return true
		}
	}
	return false
}

func FuzzLineDiscipline(f *testing.F) {
	for _, s := range []string{"a\r\nb\r\n", "\n.\n", "\r\n.\r", "STARTTLS\r\n\x16", "STARTTLS\r\n\x16\n.\n", "\r\r\n\x00", ""} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, oneByte bool) {
		out := discipline(in, oneByte)
		// Every CRLF survives; nothing else can end a line.
		if bytes.Count(out, []byte("\r\n")) != bytes.Count(in, []byte("\r\n")) {
			t.Fatalf("CRLF count changed: %q -> %q", in, out)
		}
		if bytes.Count(bytes.ReplaceAll(out, []byte("\r\n"), nil), []byte("\n")) != 0 ||
			bytes.Count(bytes.ReplaceAll(out, []byte("\r\n"), nil), []byte("\r")) != 0 {
			t.Fatalf("bare line ending passed: %q -> %q", in, out)
		}
		if len(out) != len(in) {
			t.Fatalf("length changed: %q -> %q", in, out)
		}
		// What the client sends alone never makes Conn step aside, even
		// when the server offers STARTTLS.
		if offered := disciplineOffering(in, oneByte, true); !bytes.Equal(offered, out) {
			t.Fatalf("with STARTTLS offered: %q -> %q, without: %q", in, offered, out)
		}
		// The data check refuses exactly the inputs with a bare CR, LF or NUL.
		_, err := io.ReadAll(&Reader{R: iotest.OneByteReader(bytes.NewReader(in))})
		if (err != nil) != hasBare(in) {
			t.Fatalf("Reader on %q: err %v, want bare=%v", in, err, hasBare(in))
		}
	})
}
