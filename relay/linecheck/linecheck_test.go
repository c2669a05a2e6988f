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

func discipline(in []byte, oneByte bool) []byte {
	var r io.Reader = bytes.NewReader(in)
	if oneByte {
		r = iotest.OneByteReader(r)
	}
	out, _ := io.ReadAll(NewConn(pipeConn{r: r}, false))
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

func TestConnStepsAsideForTLSAfterSTARTTLS(t *testing.T) {
	in := "EHLO x\r\nSTARTTLS\r\n\x16\x03\x01\n\r\x00raw"
	c := NewConn(pipeConn{r: iotest.OneByteReader(bytes.NewReader([]byte(in)))}, true)
	out, _ := io.ReadAll(c)
	if string(out) != in {
		t.Fatalf("TLS bytes were altered: %q", out)
	}
	// Without STARTTLS offered, the same bytes stay disciplined.
	c = NewConn(pipeConn{r: bytes.NewReader([]byte(in))}, false)
	out, _ = io.ReadAll(c)
	if bytes.Contains(out, []byte("\n\r")) {
		t.Fatalf("bare line endings passed: %q", out)
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
	for _, s := range []string{"a\r\nb\r\n", "\n.\n", "\r\n.\r", "STARTTLS\r\n\x16", "\r\r\n\x00", ""} {
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
		// The data check refuses exactly the inputs with a bare CR, LF or NUL.
		_, err := io.ReadAll(&Reader{R: iotest.OneByteReader(bytes.NewReader(in))})
		if (err != nil) != hasBare(in) {
			t.Fatalf("Reader on %q: err %v, want bare=%v", in, err, hasBare(in))
		}
	})
}
