package relay

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tlsrelay/policy/certgen"
)

// aiosmtpdUpstream is Python's aiosmtpd (Debian: python3-aiosmtpd) as a
// STARTTLS upstream: an SMTP server that shares no code with go-smtp, so
// the relay's own client side is checked against an independent reading
// of the RFCs. It writes each message it accepts to dir as N.eml.
const aiosmtpdUpstream = `
import os, ssl, sys, time
from aiosmtpd.controller import Controller

port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

class Store:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(out) if f.endswith(".eml")])
        tmp = os.path.join(out, "%d.tmp" % n)
        with open(tmp, "wb") as f:
            f.write(("%s|%s\n" % (envelope.mail_from, ",".join(envelope.rcpt_tos))).encode())
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(out, "%d.eml" % n))
        return "250 2.0.0 stored by aiosmtpd"

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Store(), hostname="127.0.0.1", port=port, tls_context=ctx,
               require_starttls=True, server_hostname="mx.example.test")
c.start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
c.stop()
`

func startAiosmtpd(t *testing.T, leaf *certgen.Issued) (addr, dir string) {
	t.Helper()
	py := "/usr/bin/python3" // Debian's, which has the python3-aiosmtpd package
	if err := exec.Command(py, "-c", "import aiosmtpd").Run(); err != nil {
		t.Skip("aiosmtpd not installed (apt-get install python3-aiosmtpd)")
	}
	tmp := t.TempDir()
	cert, key := filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem")
	keyPEM, err := certgen.KeyPEM(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cert, certgen.CertPEM(leaf.Cert), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(tmp, "mail")
	os.Mkdir(dir, 0o700)
	addr = freePort(t)
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(py, "-c", aiosmtpdUpstream, port, cert, key, dir)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
		}
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.HasPrefix(line, "ready")
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("aiosmtpd did not start: %s", stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("aiosmtpd did not start in time: %s", stderr.String())
	}
	return addr, dir
}

// TestDeliversToAiosmtpd relays over verified STARTTLS to aiosmtpd, which
// offers neither PIPELINING nor CHUNKING: the step-by-step DATA path,
// dot-stuffing included, against a server that is not go-smtp.
func TestDeliversToAiosmtpd(t *testing.T) {
	p := newPKI(t, "Test CA")
	addr, dir := startAiosmtpd(t, p.leaf(t, "mx.example.test"))
	tr := startRelay(t, baseConfig(t.TempDir())+destination("example.test", addr, p.caFile, "mx.example.test"))
	bodies := []string{
		"From: app@sender.test\r\nSubject: one\r\n\r\n.a line starting with a dot\r\n..two dots\r\n.\r\nend\r\n",
		"From: app@sender.test\r\nSubject: two\r\n\r\nsecond message, same pooled connection\r\n",
	}
	for _, b := range bodies {
		if _, err := submit(tr.Addr().String(), "app@sender.test", []string{"a@example.test", "b@example.test"}, b); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	eventually(t, 15*time.Second, "both messages stored by aiosmtpd", func() bool {
		got = got[:0]
		for i := range bodies {
			raw, err := os.ReadFile(filepath.Join(dir, string(rune('0'+i))+".eml"))
			if err != nil {
				return false
			}
			got = append(got, string(raw))
		}
		return true
	})
	for i, b := range bodies {
		want := "app@sender.test|a@example.test,b@example.test\n" + b
		if !strings.Contains(strings.Join(got, "\x00"), want) {
			t.Errorf("message %d not stored as sent; aiosmtpd has:\n%q\nwant:\n%q", i, got, want)
		}
	}
	if logs := tr.logs.String(); !strings.Contains(logs, "stored by aiosmtpd") {
		t.Errorf("the upstream's reply is not in the log:\n%s", logs)
	}
}
