package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"tlsrelay/relay/drop"
	"tlsrelay/relay/sink"
)

// sendmailFixture is a verified upstream, a configuration for a relay in
// front of it (e2e.test routed there, nothing else), and a drop directory.
type sendmailFixture struct {
	fx      *upstreamFixture
	up      *sink.Sink
	cfg     string
	dropDir string
	// sendmail is a symbolic link named "sendmail" to the built binary:
	// the tests run tlsrelay under that name, as programs do.
	sendmail string
}

func newSendmailFixture(t *testing.T) *sendmailFixture {
	t.Helper()
	f := &sendmailFixture{fx: newUpstreamFixture(t)}
	up, err := sink.Start(sink.Options{Cert: f.fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	f.up = up
	dir := t.TempDir()
	f.dropDir = filepath.Join(dir, "drop")
	f.cfg = filepath.Join(dir, "tlsrelay.toml")
	// sendmail finds the relay at its listen address: a fixed port here.
	cfg := e2eConfig(filepath.Join(dir, "spool"), f.fx.caFile,
		fmt.Sprintf("[sendmail]\ndrop_dir = %q\n", f.dropDir), e2eDest{"e2e.test", up.Addr(), ""})
	cfg = strings.Replace(cfg, `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", freeAddr(t)), 1)
	writeConfigFile(t, f.cfg, cfg)
	f.sendmail = filepath.Join(dir, "sendmail")
	if err := os.Symlink(binary, f.sendmail); err != nil {
		t.Fatal(err)
	}
	return f
}

// start runs the relay on the fixture's configuration.
func (f *sendmailFixture) start(t *testing.T) *proc {
	t.Helper()
	return startBinary(t, f.cfg)
}

// run runs sendmail with args and stdin, its configuration given by -C.
func (f *sendmailFixture) run(t *testing.T, stdin string, args ...string) (stderr string, code int) {
	t.Helper()
	cmd := exec.Command(f.sendmail, append([]string{"-C", f.cfg}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	cmd.Stdout = &errb
	cmd.Run()
	return errb.String(), cmd.ProcessState.ExitCode()
}

// one waits for exactly one message at the upstream and returns it.
func (f *sendmailFixture) one(t *testing.T) sink.Message {
	t.Helper()
	if !f.up.Wait(1, 10*time.Second) {
		t.Fatal("the message did not reach the upstream")
	}
	msgs := f.up.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages at the upstream, want 1", len(msgs))
	}
	return msgs[0]
}

// header returns the header section of a message, up to the empty line.
func header(data []byte) string {
	h, _, _ := strings.Cut(string(data), "\r\n\r\n")
	return h + "\r\n"
}

// checkCRLF fails unless every line of data ends in CRLF.
func checkCRLF(t *testing.T, data []byte) {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(data, []byte("\r\n"), nil), []byte("\n")) || !bytes.HasSuffix(data, []byte("\r\n")) {
		t.Errorf("not every line ends in CRLF: %q", data)
	}
}

var dateRE = regexp.MustCompile(`(?m)^Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}\r$`)
var msgIDRE = regexp.MustCompile(`(?m)^Message-ID: <[^@>]+@relay\.e2e\.test>\r$`)

// TestSendmailPHPStyle is PHP's mail(): `sendmail -t -i`, recipients in
// To:, Cc: and Bcc: (one folded), lines ending in LF, a line with a single
// dot in the body.
func TestSendmailPHPStyle(t *testing.T) {
	f := newSendmailFixture(t)
	f.start(t)
	in := "To: Alice <alice@e2e.test>,\n  bob@e2e.test\nCc: carol@e2e.test\nBcc: Dave <dave@e2e.test>\nSubject: invoice\n\nline one\n.\nline after the dot\n"
	out, code := f.run(t, in, "-t", "-i", "-v")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if !strings.Contains(out, "sendmail: relay: 2.0.0 OK queued as ") {
		t.Errorf("-v does not show the relay's reply (or the message went through the drop directory): %s", out)
	}
	m := f.one(t)
	if got := strings.Join(m.To, ","); got != "alice@e2e.test,bob@e2e.test,carol@e2e.test,dave@e2e.test" {
		t.Errorf("recipients %s", got)
	}
	if m.From != "root@relay.e2e.test" && !strings.HasSuffix(m.From, "@relay.e2e.test") {
		t.Errorf("envelope sender %q, want the invoking user at the relay's host name", m.From)
	}
	h := header(m.Data)
	if strings.Contains(strings.ToLower(string(m.Data)), "bcc") || strings.Contains(string(m.Data), "dave@") {
		t.Errorf("the Bcc: field reached the upstream:\n%s", m.Data)
	}
	if !strings.Contains(h, "To: Alice <alice@e2e.test>,\r\n  bob@e2e.test\r\n") {
		t.Errorf("the folded To: field was not kept as written:\n%s", h)
	}
	if !dateRE.MatchString(h) || !msgIDRE.MatchString(h) || !strings.Contains(h, "\r\nFrom: <"+m.From+">\r\n") {
		t.Errorf("Date:, Message-ID: or From: not added:\n%s", h)
	}
	if !strings.HasSuffix(string(m.Data), "\r\n\r\nline one\r\n.\r\nline after the dot\r\n") {
		t.Errorf("body with -i: %q", m.Data)
	}
	checkCRLF(t, m.Data)
}

// TestSendmailCronStyle is cron: `sendmail -FCronDaemon -i -B8BITMIME
// -oem user@dom`, with a From: cron did not write.
func TestSendmailCronStyle(t *testing.T) {
	f := newSendmailFixture(t)
	f.start(t)
	in := "Subject: Cron <root@host> /usr/local/bin/backup\nContent-Type: text/plain; charset=UTF-8\n\nbackup done: 3 files, größer als gestern\n"
	if out, code := f.run(t, in, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@e2e.test"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	m := f.one(t)
	if len(m.To) != 1 || m.To[0] != "ops@e2e.test" {
		t.Errorf("recipients %v", m.To)
	}
	if !strings.Contains(header(m.Data), "From: \"CronDaemon\" <"+m.From+">\r\n") {
		t.Errorf("From: with -F as the display name missing:\n%s", header(m.Data))
	}
	if !strings.Contains(string(m.Data), "größer als gestern\r\n") {
		t.Errorf("8-bit body: %q", m.Data)
	}
}

// TestSendmailMailxStyle is mailx: `sendmail -i -- rcpt`, with a From: the
// program wrote, which is kept.
func TestSendmailMailxStyle(t *testing.T) {
	f := newSendmailFixture(t)
	f.start(t)
	in := "From: Reports <reports@legacy.test>\nTo: boss@e2e.test\nSubject: weekly\n\n-- \nsignature\n"
	if out, code := f.run(t, in, "-i", "--", "boss@e2e.test"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	m := f.one(t)
	h := header(m.Data)
	if strings.Count(h, "From:") != 1 || !strings.Contains(h, "From: Reports <reports@legacy.test>\r\n") {
		t.Errorf("the program's From: was not kept alone:\n%s", h)
	}
	if !strings.HasSuffix(string(m.Data), "\r\n\r\n-- \r\nsignature\r\n") {
		t.Errorf("body %q", m.Data)
	}
}

// TestSendmailSenderAndName covers -f and -F, attached and separate, and
// -r, as nodemailer and scripts pass them.
func TestSendmailSenderAndName(t *testing.T) {
	f := newSendmailFixture(t)
	f.start(t)
	cases := []struct {
		args       []string
		from, head string
	}{
		{[]string{"-f", "app@legacy.test", "-F", "The App", "-i", "a@e2e.test"}, "app@legacy.test", `From: "The App" <app@legacy.test>`},
		{[]string{"-fapp2@legacy.test", "-FÜnïcode Name", "b@e2e.test"}, "app2@legacy.test", `From: =?utf-8?q?=C3=9Cn=C3=AFcode_Name?= <app2@legacy.test>`},
		{[]string{"-r", "<bounces@legacy.test>", "c@e2e.test"}, "bounces@legacy.test", `From: <bounces@legacy.test>`},
	}
	for i, c := range cases {
		if out, code := f.run(t, "Subject: s\n\nbody\n", c.args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, out)
		}
		if !f.up.Wait(i+1, 10*time.Second) {
			t.Fatalf("%v: not delivered", c.args)
		}
		m := f.up.Messages()[i]
		if m.From != c.from || !strings.Contains(header(m.Data), c.head+"\r\n") {
			t.Errorf("%v: envelope sender %q, header:\n%s\nwant sender %q and %s", c.args, m.From, header(m.Data), c.from, c.head)
		}
	}
}

// TestSendmailDotLine: without -i a line with a single dot ends the
// message (what follows is not sent); bare LF and CRLF input both arrive
// as CRLF.
func TestSendmailDotLine(t *testing.T) {
	f := newSendmailFixture(t)
	f.start(t)
	in := "Subject: dots\r\n\nfirst\r\nsecond\n.\nnot part of the message\n"
	if out, code := f.run(t, in, "x@e2e.test"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	m := f.one(t)
	if !strings.HasSuffix(string(m.Data), "\r\n\r\nfirst\r\nsecond\r\n") || strings.Contains(string(m.Data), "not part") {
		t.Errorf("without -i: %q", m.Data)
	}
	checkCRLF(t, m.Data)
}

// TestSendmailRefusedRecipient: a recipient the relay refuses (no
// destination claims its domain) is exit 67 with the recipient and the
// relay's reason, and nothing is sent to the other recipient.
func TestSendmailRefusedRecipient(t *testing.T) {
	f := newSendmailFixture(t)
	f.start(t)
	out, code := f.run(t, "Subject: x\n\nx\n", "ok@e2e.test", "someone@elsewhere.test")
	if code != 67 {
		t.Fatalf("exit %d, want 67 (EX_NOUSER): %s", code, out)
	}
	if !strings.Contains(out, "<someone@elsewhere.test>") || !strings.Contains(out, "550 5.7.1 Relaying to elsewhere.test denied") {
		t.Errorf("stderr does not name the recipient and the reason: %s", out)
	}
	time.Sleep(200 * time.Millisecond)
	if n := f.up.Count(); n != 0 {
		t.Errorf("%d messages reached the upstream", n)
	}
}

// TestSendmailUsage: options sendmail does not take are exit 64 with what
// is wrong; a message without recipients is 65.
func TestSendmailUsage(t *testing.T) {
	f := newSendmailFixture(t)
	for _, args := range [][]string{{"-X", "a@e2e.test"}, {"-bp"}, {"-odq", "a@e2e.test"}, {"-f"}, {"-B", "BINARYMIME", "a@e2e.test"}} {
		out, code := f.run(t, "Subject: x\n\nx\n", args...)
		if code != 64 || !strings.Contains(out, "not supported") && !strings.Contains(out, "needs a value") && !strings.Contains(out, "body type") {
			t.Errorf("%v: exit %d, want 64 with the reason: %s", args, code, out)
		}
	}
	if out, code := f.run(t, "Subject: x\n\nx\n", "-t"); code != 65 || !strings.Contains(out, "no recipient") {
		t.Errorf("-t without To:: exit %d: %s", code, out)
	}
	if out, code := f.run(t, "To: a@e2e.test, <broken\n\nx\n", "-t"); code != 65 || !strings.Contains(out, "To: field") {
		t.Errorf("-t with an unreadable To:: exit %d: %s", code, out)
	}
	// The config comes from TLSRELAY_CONFIG when -C is not given.
	cmd := exec.Command(f.sendmail, "-bx")
	cmd.Env = append(os.Environ(), "TLSRELAY_CONFIG=/nonexistent/tlsrelay.toml")
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 64 {
		t.Errorf("-bx: exit %d: %s", cmd.ProcessState.ExitCode(), out)
	}
	cmd = exec.Command(f.sendmail, "a@e2e.test")
	cmd.Env = append(os.Environ(), "TLSRELAY_CONFIG=/nonexistent/tlsrelay.toml")
	if out, _ := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 78 || !strings.Contains(string(out), "/nonexistent/tlsrelay.toml") {
		t.Errorf("TLSRELAY_CONFIG not used: exit %d: %s", cmd.ProcessState.ExitCode(), out)
	}
}

// TestSendmailRelayDownKeepsTheMessage: with the relay stopped, sendmail
// keeps the message in the drop directory and exits 0; the relay, once
// started, delivers it exactly once and empties the directory.
func TestSendmailRelayDownKeepsTheMessage(t *testing.T) {
	f := newSendmailFixture(t)
	// The relay has never run: the drop directory does not exist yet.
	if err := os.Mkdir(f.dropDir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, code := f.run(t, "Subject: while down\n\nkept\n", "-v", "-i", "late@e2e.test")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if !strings.Contains(out, "kept in "+f.dropDir) {
		t.Errorf("-v does not say where the message is kept: %s", out)
	}
	files, _ := filepath.Glob(filepath.Join(f.dropDir, "msg.*"))
	if len(files) != 1 {
		t.Fatalf("drop directory holds %v, want one msg. file", files)
	}
	p := f.start(t)
	m := f.one(t)
	if m.To[0] != "late@e2e.test" || !strings.HasSuffix(string(m.Data), "\r\n\r\nkept\r\n") {
		t.Errorf("delivered %v %q", m.To, m.Data)
	}
	eventuallyTrue(t, "the drop directory emptied", func() bool {
		left, _ := filepath.Glob(filepath.Join(f.dropDir, "*", "*"))
		top, _ := filepath.Glob(filepath.Join(f.dropDir, "msg.*"))
		return len(left)+len(top) == 0
	})
	time.Sleep(1500 * time.Millisecond) // more than one look at the directory
	if n := f.up.Count(); n != 1 {
		t.Errorf("%d deliveries, want exactly 1", n)
	}
	if !strings.Contains(p.log(), "drop directory: message imported") {
		t.Errorf("the import is not logged:\n%s", p.log())
	}
}

func eventuallyTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestSendmailSMTPSession is Symfony Mailer's sendmail transport:
// `sendmail -bs`, SMTP over pipes, here driven by Python's smtplib. The
// relay's own answers come back (its queue id, its refusal of a domain no
// destination claims).
func TestSendmailSMTPSession(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: skipping the -bs test with smtplib")
	}
	f := newSendmailFixture(t)
	f.start(t)
	script := `
import smtplib, subprocess, sys
p = subprocess.Popen([sys.argv[1], "-bs", "-C", sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
class Pipe:
    def sendall(self, b):
        p.stdin.write(b); p.stdin.flush()
    def makefile(self, mode):
        return p.stdout
    def close(self):
        pass
class PipeSMTP(smtplib.SMTP):
    def connect(self, host="localhost", port=0, source_address=None):
        self.sock = Pipe()
        self.file = None
        return self.getreply()
s = PipeSMTP()
s.connect()
s.ehlo("symfony.test")
code, msg = s.mail("app@legacy.test")
print("mail", code)
print("rcpt", s.rcpt("user@e2e.test"))
print("refused", s.rcpt("user@elsewhere.test"))
code, msg = s.data(b"From: app@legacy.test\r\nSubject: via -bs\r\n\r\n.leading dot\r\nbye\r\n")
print("data", code, msg.decode())
s.quit()
p.wait()
print("exit", p.returncode)
`
	out, err := exec.Command(py, "-c", script, f.sendmail, f.cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	for _, want := range []string{"mail 250", "rcpt (250", "refused (550, b\"5.7.1 Relaying to elsewhere.test denied", "data 250 2.0.0 OK queued as ", "exit 0"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("smtplib saw no %q:\n%s", want, out)
		}
	}
	m := f.one(t)
	if m.From != "app@legacy.test" || len(m.To) != 1 || string(m.Data) != "From: app@legacy.test\r\nSubject: via -bs\r\n\r\n.leading dot\r\nbye\r\n" {
		t.Errorf("delivered %s %v %q", m.From, m.To, m.Data)
	}
}

// TestServeTellsSystemdWhenReady: under systemd (Type=notify) the relay
// sends READY=1 to $NOTIFY_SOCKET once it accepts connections.
func TestServeTellsSystemdWhenReady(t *testing.T) {
	f := newSendmailFixture(t)
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := startBinary(t, f.cfg, "NOTIFY_SOCKET="+sock)
	ln.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := ln.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	if string(buf[:n]) != "READY=1" {
		t.Fatalf("notification %q", buf[:n])
	}
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatalf("READY=1 sent, but the relay does not accept connections: %v", err)
	}
	c.Close()
}

// TestMailqIsQueueList: run under the name mailq, tlsrelay lists the queue.
func TestMailqIsQueueList(t *testing.T) {
	f := newSendmailFixture(t)
	mailq := filepath.Join(filepath.Dir(f.sendmail), "mailq")
	if err := os.Symlink(binary, mailq); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(mailq, "-config", f.cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "empty") && !strings.Contains(string(out), "ID") {
		t.Fatalf("mailq: %v\n%s", err, out)
	}
	want, _ := exec.Command(binary, "queue", "-config", f.cfg, "list").CombinedOutput()
	if string(out) != string(want) {
		t.Errorf("mailq printed %q, queue list %q", out, want)
	}
}

// TestDroppedMessagesMeetTheFrontDoorRules: a local user may write
// anything into the drop directory, so what the relay imports is checked
// as a message from an SMTP client is: a bare CR, a message over
// max_message_bytes and a domain no destination claims are refused (set
// aside in refused/, with the reason in the log) and never delivered; a
// proper message next to them goes.
func TestDroppedMessagesMeetTheFrontDoorRules(t *testing.T) {
	f := newSendmailFixture(t)
	b, _ := os.ReadFile(f.cfg)
	writeConfigFile(t, f.cfg, strings.Replace(string(b), `hostname = "relay.e2e.test"`, "hostname = \"relay.e2e.test\"\nmax_message_bytes = 4096", 1))
	if err := drop.PrepareDir(f.dropDir); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		env  drop.Envelope
		body string
		why  string
	}{
		{drop.Envelope{From: "a@legacy.test", Recipients: []string{"x@e2e.test"}}, "Subject: cr\r\n\r\nhidden\rMAIL FROM:<x>\r\n", "bare CR or LF"},
		{drop.Envelope{From: "a@legacy.test", Recipients: []string{"x@e2e.test"}}, "Subject: big\r\n\r\n" + strings.Repeat("0123456789\r\n", 500), "552"},
		{drop.Envelope{From: "a@legacy.test", Recipients: []string{"x@open-relay.test"}}, "Subject: relay\r\n\r\nx\r\n", "Relaying to open-relay.test denied"},
	}
	for _, m := range bad {
		if _, err := drop.Write(f.dropDir, m.env, []byte(m.body)); err != nil {
			t.Fatal(err)
		}
	}
	drop.Write(f.dropDir, drop.Envelope{From: "a@legacy.test", Recipients: []string{"good@e2e.test"}}, []byte("Subject: good\r\n\r\nfine\r\n"))
	p := f.start(t)
	m := f.one(t)
	if m.To[0] != "good@e2e.test" {
		t.Errorf("delivered %v", m.To)
	}
	eventuallyTrue(t, "three files in refused/", func() bool {
		refused, _ := os.ReadDir(filepath.Join(f.dropDir, "refused"))
		return len(refused) == 3
	})
	for _, m := range bad {
		if !strings.Contains(p.log(), m.why) {
			t.Errorf("the log does not say %q:\n%s", m.why, p.log())
		}
	}
	if n := f.up.Count(); n != 1 {
		t.Errorf("%d messages delivered, want only the good one", n)
	}
}

// TestSendmailAsAnotherUser is PHP's case: sendmail run by an ordinary
// user (here nobody) while the relay is down drops into the directory the
// relay made (3733), and the relay, once up, delivers it and logs the uid.
func TestSendmailAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run sendmail as another user")
	}
	f := newSendmailFixture(t)
	// Let nobody reach the binary and the configuration.
	for _, d := range []string{filepath.Dir(binary), filepath.Dir(f.cfg), filepath.Dir(filepath.Dir(f.cfg))} {
		os.Chmod(d, 0o755)
	}
	os.Chmod(f.cfg, 0o644)
	// A relay run made the drop directory; stop it so sendmail must drop.
	p := f.start(t)
	waitLog(t, p, "importing from the drop directory") // made after the listener
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
	cmd := exec.Command(binary, "sendmail", "-C", f.cfg, "-i", "php@e2e.test")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stdin = strings.NewReader("Subject: from nobody\n\nhi\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sendmail as nobody: %v\n%s", err, out)
	}
	if _, err := os.ReadDir(f.dropDir); err != nil {
		t.Fatal(err)
	}
	lister := exec.Command("ls", f.dropDir)
	lister.SysProcAttr = cmd.SysProcAttr
	if out, err := lister.CombinedOutput(); err == nil {
		t.Errorf("another user can list the drop directory: %s", out)
	}
	p = f.start(t)
	m := f.one(t)
	if m.From != "nobody@relay.e2e.test" {
		t.Errorf("envelope sender %q, want nobody@relay.e2e.test", m.From)
	}
	eventuallyTrue(t, "the import logged", func() bool { return strings.Contains(p.log(), `"uid":65534`) })
}
