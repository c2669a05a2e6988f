package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"tlsrelay/relay/sink"
)

// TestFrontDoorTakesBDAT: the front door offers CHUNKING (go-smtp does),
// so a client such as Postfix sends BDAT. The chunks arrive upstream byte
// for byte, with no dot-stuffing to undo (a lone "." line is content
// here), and the line discipline still refuses a bare LF inside a chunk.
func TestFrontDoorTakesBDAT(t *testing.T) {
	p := newPKI(t, "Test CA")
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", up.Addr(), p.caFile, "mx.example.test"))

	s := dialRaw(t, tr.Addr().String())
	if ehlo := s.cmd("EHLO client.test"); !strings.Contains(ehlo, "CHUNKING") {
		t.Fatalf("EHLO does not offer CHUNKING:\n%s", ehlo)
	}
	bdat := func(chunk string, last bool) string {
		kw := ""
		if last {
			kw = " LAST"
		}
		s.send(fmt.Sprintf("BDAT %d%s\r\n%s", len(chunk), kw, chunk))
		return s.reply()
	}
	first := "Subject: bdat\r\n\r\nline one\r\n.\r\n"
	second := "..two dots stay two\r\nlast line\r\n"
	for _, step := range []struct{ got, want string }{
		{s.cmd("MAIL FROM:<app@sender.test>"), "250"},
		{s.cmd("RCPT TO:<rcpt@example.test>"), "250"},
		{bdat(first, false), "250"},
		{bdat(second, true), "250 2.0.0 OK queued as "},
	} {
		if !strings.HasPrefix(step.got, step.want) {
			t.Fatalf("reply %q, want %q", step.got, step.want)
		}
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("the BDAT message was not delivered")
	}
	if got := string(up.Messages()[0].Data); got != first+second {
		t.Errorf("upstream received %q, want the chunks byte for byte: %q", got, first+second)
	}

	s.cmd("MAIL FROM:<app@sender.test>")
	s.cmd("RCPT TO:<rcpt@example.test>")
	if got := bdat("Subject: bare\r\n\r\nbare LF\nhere\r\n", true); !strings.HasPrefix(got, "554 5.6.0") {
		t.Errorf("a bare LF in a chunk: reply %q, want 554 5.6.0", got)
	}
	time.Sleep(200 * time.Millisecond)
	if n := up.Count(); n != 1 {
		t.Errorf("upstream has %d messages, want only the first", n)
	}
}
