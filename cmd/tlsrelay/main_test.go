package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
	"tlsrelay/relay/users"
)

// binary is the tlsrelay executable built once for the end-to-end tests:
// they run the real binary, as a user would, not the packages in-process.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tlsrelay-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "tlsrelay")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building tlsrelay: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running tlsrelay process and what it logged.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs bytes.Buffer
	addr string
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.Write(b)
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// startBinary runs `tlsrelay serve -config cfg` and waits until it listens.
func startBinary(t *testing.T, cfg string, env ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, "serve", "--config", cfg)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p
	p.cmd.Stdout = p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("tlsrelay output:\n%s", p.log())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(p.log()))
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, `"addr":"`); i >= 0 && strings.Contains(line, "tlsrelay listening") {
				rest := line[i+len(`"addr":"`):]
				p.addr = rest[:strings.IndexByte(rest, '"')]
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("tlsrelay did not start listening:\n%s", p.log())
	return nil
}

type upstreamFixture struct {
	ca     *certgen.CA
	caFile string
	leaf   *certgen.Issued
}

func newUpstreamFixture(t *testing.T) *upstreamFixture {
	t.Helper()
	ca, err := certgen.NewCA("E2E CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(certgen.Options{CommonName: "mx.e2e.test", DNSNames: []string{"mx.e2e.test"}})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		t.Fatal(err)
	}
	return &upstreamFixture{ca: ca, caFile: caFile, leaf: leaf}
}

// e2eDest is one [[destination]] of an end-to-end configuration; the
// upstream presents a certificate for mx.e2e.test from the fixture's CA.
type e2eDest struct{ domain, upstream, extra string }

// e2eConfig renders the configuration the end-to-end tests run with:
// extra goes at the end of the top part (e.g. a [metrics] table).
func e2eConfig(spool, caFile, extra string, dests ...e2eDest) string {
	cfg := fmt.Sprintf(`
[server]
listen = "127.0.0.1:0"
hostname = "relay.e2e.test"
[queue]
dir = %q
retry_min = "100ms"
retry_max = "300ms"
[log]
format = "json"
%s`, spool, extra)
	for _, d := range dests {
		cfg += fmt.Sprintf(`
[[destination]]
domains = [%q]
upstream = %q
ca_file = %q
server_name = "mx.e2e.test"
require_hostname = ["mx.e2e.test"]
%s`, d.domain, d.upstream, caFile, d.extra)
	}
	return cfg
}

// writeConfigFile writes a configuration to path, or fails the test.
func writeConfigFile(t *testing.T, path, cfg string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeConfig writes a configuration with one destination, e2e.test.
func writeConfig(t *testing.T, spool, upstream, caFile string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tlsrelay.toml")
	writeConfigFile(t, path, e2eConfig(spool, caFile, "", e2eDest{"e2e.test", upstream, ""}))
	return path
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// plainSend submits over plain SMTP, as a legacy application does.
func plainSend(addr, to, body string) error {
	return plainSendFrom(addr, "app@legacy.test", to, body)
}

func plainSendFrom(addr, from, to, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.SendMail(from, []string{to}, strings.NewReader(body))
}

func TestBinaryRelaysAndStopsCleanly(t *testing.T) {
	fx := newUpstreamFixture(t)
	up, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	p := startBinary(t, writeConfig(t, t.TempDir(), up.Addr(), fx.caFile))

	if err := plainSend(p.addr, "user@e2e.test", "Subject: e2e\r\n\r\nhello\r\n"); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if got := string(up.Messages()[0].Data); got != "Subject: e2e\r\n\r\nhello\r\n" {
		t.Errorf("body %q", got)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want status 0", err)
	}
	if !strings.Contains(p.log(), `"tls_version":"TLS 1.3"`) {
		t.Error("delivery log line lacks the TLS version")
	}
}

// TestKill9LosesNothing answers 250, kills the relay with SIGKILL before
// the upstream exists, and checks that a new process delivers the message.
func TestKill9LosesNothing(t *testing.T) {
	fx := newUpstreamFixture(t)
	upAddr := freeAddr(t)
	spool := t.TempDir()
	cfg := writeConfig(t, spool, upAddr, fx.caFile)
	p := startBinary(t, cfg)
	submitThenKill(t, p, 5, "u", "")

	restartWithUpstream(t, fx, upAddr, cfg, 5, "after kill -9 and restart")
}

// TestPythonClientSubmits uses an SMTP client that is not Go's: python3's
// smtplib, as many legacy scripts do.
func TestPythonClientSubmits(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: skipping the non-Go client test")
	}
	fx := newUpstreamFixture(t)
	up, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	p := startBinary(t, writeConfig(t, t.TempDir(), up.Addr(), fx.caFile))
	host, port, _ := net.SplitHostPort(p.addr)
	script := fmt.Sprintf(`
import smtplib
s = smtplib.SMTP(%q, %s, timeout=20)
s.ehlo("python.test")
s.sendmail("py@legacy.test", ["user@e2e.test"], b"Subject: from python\r\n\r\nhi\r\n")
try:
    s.sendmail("py@legacy.test", ["user@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
    print("OPEN RELAY")
except smtplib.SMTPRecipientsRefused as e:
    code, msg = e.recipients["user@elsewhere.test"]
    print("refused", code, msg.decode())
s.quit()
`, host, port)
	out, err := exec.Command(py, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "refused 550 5.7.1") {
		t.Errorf("python saw: %s", out)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("python's message not delivered")
	}
	if got := string(up.Messages()[0].Data); !strings.Contains(got, "Subject: from python") {
		t.Errorf("body %q", got)
	}
}

func TestCommandLine(t *testing.T) {
	run := func(args ...string) (string, int) {
		cmd := exec.Command(binary, args...)
		cmd.Dir = t.TempDir() // no ./tlsrelay.toml here
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := run("frobnicate"); code != 2 || !strings.Contains(out, "Usage:") {
		t.Errorf("unknown command: exit %d, output %q", code, out)
	}
	if out, code := run("serve", "-bogus"); code != 2 || !strings.Contains(out, "Usage") {
		t.Errorf("unknown flag: exit %d, output %q", code, out)
	}
	if out, code := run("version"); code != 0 || !strings.HasPrefix(out, "tlsrelay ") {
		t.Errorf("version: exit %d, output %q", code, out)
	}
	if out, code := run("config", "check", "-config", "../../config.example.toml"); code == 0 {
		// Dir is a temp dir, so the relative path does not resolve: exit 1.
		t.Errorf("config check of a missing file: exit %d, output %q", code, out)
	}
	example, _ := filepath.Abs("../../config.example.toml")
	if out, code := run("config", "check", "-config", example); code != 0 || !strings.Contains(out, "OK") {
		t.Errorf("config check of the example: exit %d, output %q", code, out)
	}
	if out, code := run("serve"); code != 1 || !strings.Contains(out, "tlsrelay.toml") {
		t.Errorf("serve without a config: exit %d, output %q", code, out)
	}
}

func TestDemoRunsEndToEnd(t *testing.T) {
	cmd := exec.Command(binary, "demo", "-listen", "127.0.0.1:0", "-once")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"relay answered: 250", "received it over TLS", "tls_failure=expired", "received 0 messages"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

func TestPasswdPrintsAUsableLine(t *testing.T) {
	cmd := exec.Command(binary, "passwd", "-senders", "app@x.test,*@y.test", "alice")
	cmd.Stdin = strings.NewReader("a long enough password\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("passwd: %v", err)
	}
	line := strings.TrimSpace(string(out))
	u, err := users.ParseLine(line)
	if err != nil {
		t.Fatalf("line %q does not parse: %v", line, err)
	}
	if strings.Contains(line, "a long enough password") {
		t.Fatal("the password itself is in the output")
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "users")
	os.WriteFile(f, []byte(line+"\n"), 0o600)
	db, err := users.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := db.Authenticate("alice", "a long enough password"); !ok {
		t.Error("the printed hash does not verify the password")
	}
	if _, ok := db.Authenticate("alice", "wrong"); ok {
		t.Error("a wrong password verifies")
	}
	if !u.MaySend("x@y.test") || u.MaySend("x@z.test") {
		t.Errorf("sender patterns %v", u.Senders)
	}
	cmd = exec.Command(binary, "passwd", "bob")
	cmd.Stdin = strings.NewReader("short\n")
	if err := cmd.Run(); err == nil {
		t.Error("a too short password was accepted")
	}
}

// TestKill9WithMessagesInTheJournal kills the relay while its first
// delivery attempts hang (the upstream accepts TCP and says nothing), so
// the accepted messages are still in the spool's journal, not yet in
// files of their own. A new process must deliver every one.
func TestKill9WithMessagesInTheJournal(t *testing.T) {
	fx := newUpstreamFixture(t)
	hang, err := sink.StartSilent("")
	if err != nil {
		t.Fatal(err)
	}
	upAddr := hang.Addr()
	cfg := writeConfig(t, t.TempDir(), upAddr, fx.caFile)
	p := startBinary(t, cfg)
	submitThenKill(t, p, 5, "j", "journal ")
	hang.Close()

	up := restartWithUpstream(t, fx, upAddr, cfg, 5, "after kill -9 with messages in the journal")
	seen := map[string]bool{}
	for _, m := range up.Messages() {
		seen[m.To[0]] = true
	}
	if len(seen) != 5 {
		t.Errorf("delivered to %v, want 5 distinct recipients", seen)
	}
}

// restartWithUpstream starts the upstream at upAddr and a new relay on
// cfg's spool, and fails unless the upstream then receives n messages.
func restartWithUpstream(t *testing.T, fx *upstreamFixture, upAddr, cfg string, n int, when string) *sink.Sink {
	t.Helper()
	up, err := sink.Start(sink.Options{Addr: upAddr, Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	startBinary(t, cfg)
	if !up.Wait(n, 15*time.Second) {
		t.Fatalf("%s, %d of %d accepted messages arrived", when, up.Count(), n)
	}
	return up
}

// submitThenKill has n messages accepted (each answered 250) by the
// running binary, then kills it with SIGKILL: no chance to flush anything.
func submitThenKill(t *testing.T, p *proc, n int, user, subject string) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := plainSend(p.addr, fmt.Sprintf("%s%d@e2e.test", user, i), fmt.Sprintf("Subject: %s%d\r\n\r\nbody\r\n", subject, i)); err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}
