package relay

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/config"
	"tlsrelay/relay/sink"
	"tlsrelay/relay/spool"
)

// TestEnvelopeRoomKeepsEnvelopesCommittable: the RCPT tally refuses the
// recipient that could make the envelope too large for the spool, with
// 452 4.5.3, and whatever it accepted — with a DKIM signature added after
// DATA — commits and reads back. The addresses are the worst kind for the
// encoding (every character escaped to six bytes), independent of what
// the address parser allows.
func TestEnvelopeRoomKeepsEnvelopesCommittable(t *testing.T) {
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", "127.0.0.1:1", newPKI(t, "Test CA").caFile, "mx.example.test"))
	s := &session{relay: tr.Relay, from: strings.Repeat("&", 1000) + "@sender.test", helo: strings.Repeat(">", 1000), client: "[::1]:65535"}
	var refused error
	for i := 0; refused == nil; i++ {
		to := fmt.Sprintf("%s%d@example.test", strings.Repeat("<", 1900), i)
		if refused = s.envelopeRoom(to); refused == nil {
			s.rcpts = append(s.rcpts, to)
		}
	}
	if se, ok := refused.(*smtp.SMTPError); !ok || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 5, 3}) {
		t.Fatalf("the recipient too many: %v, want 452 4.5.3", refused)
	}
	t.Logf("%d recipients of %d bytes encoded accepted: %v", len(s.rcpts), spool.EncodedLen(s.rcpts[0]), refused)

	store, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Recover(); err != nil {
		t.Fatal(err)
	}
	p, err := store.Create(spool.Envelope{From: s.from, Recipients: s.rcpts, Received: time.Now().UTC(), Client: s.client, Helo: s.helo})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(p, testBody)
	p.SetPrepend("DKIM-Signature: " + strings.Repeat("b", 4096) + "\r\n")
	if err := p.Commit(); err != nil {
		t.Fatalf("an envelope the RCPT tally let through does not commit: %v", err)
	}
	m, err := store.Open(p.ID())
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if !slices.Equal(m.Recipients, s.rcpts) {
		t.Fatal("recipients read back differ")
	}
	// Starting a new transaction starts a new tally.
	s.rcpts = nil
	if err := s.envelopeRoom("a@example.test"); err != nil {
		t.Fatalf("first recipient of the next transaction: %v", err)
	}
}

// TestMaxRecipientsIsBounded: max_recipients above its bound is refused
// at load, and the bound keeps its promise: that many of the longest
// addresses (256 octets, every character escaped) never reach the RCPT
// tally's limit, so a configured limit is never undercut by the spool's.
func TestMaxRecipientsIsBounded(t *testing.T) {
	ca := newPKI(t, "Test CA").caFile
	cfg := func(n int) string {
		return strings.Replace(baseConfig(t.TempDir()), "max_recipients = 5", fmt.Sprintf("max_recipients = %d", n), 1) +
			destination("example.test", "127.0.0.1:1", ca, "mx.example.test")
	}
	if _, err := parseConfig(cfg(config.MaxRecipientsLimit)); err != nil {
		t.Fatalf("max_recipients = %d: %v", config.MaxRecipientsLimit, err)
	}
	_, err := parseConfig(cfg(config.MaxRecipientsLimit + 1))
	if err == nil || !strings.Contains(err.Error(), "max_recipients") || !strings.Contains(err.Error(), fmt.Sprint(config.MaxRecipientsLimit)) {
		t.Fatalf("max_recipients = %d: %v, want a refusal naming the key and the bound", config.MaxRecipientsLimit+1, err)
	}

	tr := startRelay(t, cfg(config.MaxRecipientsLimit))
	worst := func(n int) string { return strings.Repeat("<", n-len("@x")) + "@x" }
	s := &session{relay: tr.Relay, from: worst(256), helo: strings.Repeat("<", 2000), client: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"}
	for i := range config.MaxRecipientsLimit {
		to := worst(256)
		if err := s.envelopeRoom(to); err != nil {
			t.Fatalf("recipient %d of the longest kind refused: %v", i+1, err)
		}
		s.rcpts = append(s.rcpts, to)
	}
	t.Logf("worst case at max_recipients = %d: %d of %d bytes (reserve included)", config.MaxRecipientsLimit, s.envBytes, spool.MaxEnvelopeBytes)
}

// TestLargeEnvelopeRefusedBeforeDataNothingLost: with max_recipients at
// its bound and the longest, most escaped addresses the relay accepts, a
// transaction is either cut short at RCPT with 452 4.5.3 (never after
// DATA) or committed; what was answered 250 is, after a restart, delivered
// once with every accepted recipient.
func TestLargeEnvelopeRefusedBeforeDataNothingLost(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	spoolDir := t.TempDir()
	cfg := strings.Replace(baseConfig(spoolDir), "max_recipients = 5", fmt.Sprintf("max_recipients = %d", config.MaxRecipientsLimit), 1) +
		destination("example.test", addr, p.caFile, "mx.example.test")
	first := startRelay(t, cfg) // the upstream is down: the message waits in the spool

	c, err := smtp.Dial(first.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	// The longest local part the relay takes: as long as the line allows,
	// else (addresses bounded by the parser) RFC 5321's 64 octets.
	local := strings.Repeat("&", 1900)
	if err := c.Rcpt(local+"0@example.test", nil); err != nil {
		local = strings.Repeat("&", 59)
		if err := c.Rcpt(local+"0@example.test", nil); err != nil {
			t.Fatalf("the relay takes no long address: %v", err)
		}
	}
	accepted := []string{local + "0@example.test"}
	var stop error
	for i := 1; i < config.MaxRecipientsLimit; i++ {
		to := fmt.Sprintf("%s%d@example.test", local, i)
		if stop = c.Rcpt(to, nil); stop != nil {
			break
		}
		accepted = append(accepted, to)
	}
	if stop != nil {
		if se, ok := stop.(*smtp.SMTPError); !ok || se.Code != 452 || !strings.Contains(se.Message, "spool") {
			t.Fatalf("after %d recipients: %v, want 452 4.5.3 saying the envelope would be too large", len(accepted), stop)
		}
	}
	t.Logf("%d recipients of %d octets accepted; then %v", len(accepted), len(accepted[0]), stop)
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, testBody)
	if err := w.Close(); err != nil {
		t.Fatalf("DATA after the accepted recipients: %v", err)
	}
	c.Quit()
	first.stop()

	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	second := startRelay(t, cfg)
	if !up.Wait(1, 20*time.Second) {
		t.Fatalf("the message was not delivered after a restart; log:\n%s", second.logs.String())
	}
	got := up.Messages()[0]
	slices.Sort(got.To)
	slices.Sort(accepted)
	if !slices.Equal(got.To, accepted) || string(got.Data) != testBody {
		t.Fatalf("delivered to %d recipients, want the %d accepted (body equal: %v)", len(got.To), len(accepted), string(got.Data) == testBody)
	}
}

// TestDamagedJournalRecordAtRestart: messages committed after a damaged
// journal record are delivered after a restart; the damaged segment is
// kept in corrupt/ and the log says which, how many messages were saved
// and how many bytes could not be read.
func TestDamagedJournalRecordAtRestart(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr := freePort(t)
	spoolDir := t.TempDir()
	cfg := baseConfig(spoolDir) + destination("example.test", addr, p.caFile, "mx.example.test")
	first := startRelay(t, cfg)
	var ids []string
	for i := range 3 {
		reply, err := submit(first.Addr().String(), "app@sender.test", []string{"rcpt@example.test"}, fmt.Sprintf("Subject: %d\r\n\r\nmessage %d\r\n", i, i))
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		ids = append(ids, reply[strings.LastIndexByte(reply, ' ')+1:])
	}
	first.stop()

	segs, _ := filepath.Glob(filepath.Join(spoolDir, "journal", "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	seg, _ := os.ReadFile(segs[0])
	i := strings.Index(string(seg), "message 1\r\n")
	if i < 0 {
		t.Fatal("the second message is not in the segment")
	}
	seg[i] ^= 0x20 // one flipped bit in its body
	os.WriteFile(segs[0], seg, 0o600)

	up := startSink(t, sink.Options{Addr: addr, Cert: p.leaf(t, "mx.example.test").TLSCertificate()})
	second := startRelay(t, cfg)
	if !up.Wait(2, 20*time.Second) {
		t.Fatalf("%d of the 2 intact messages delivered", up.Count())
	}
	var bodies []string
	for _, m := range up.Messages() {
		bodies = append(bodies, string(m.Data))
	}
	slices.Sort(bodies)
	if len(bodies) != 2 || !strings.Contains(bodies[0], "message 0") || !strings.Contains(bodies[1], "message 2") {
		t.Fatalf("delivered %q", bodies)
	}
	moved := filepath.Join(spoolDir, "corrupt", filepath.Base(segs[0]))
	if kept, err := os.ReadFile(moved); err != nil || string(kept) != string(seg) {
		t.Fatalf("the damaged segment is not in corrupt/: %v", err)
	}
	logs := second.logs.String()
	for _, want := range []string{"level=ERROR", "journal segment damaged", "segment=" + segs[0], "recovered=2", "unreadable_bytes=", "moved_to=" + moved} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	_ = ids
}
