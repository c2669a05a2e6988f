package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
)

// scripted is an implicit-TLS upstream written for these tests: its EHLO
// offers exactly the extensions given, it records every command with
// whether it had already arrived before the previous reply was written
// (so pipelining is observed, not assumed), and it keeps what it accepted.
type scripted struct {
	ln     net.Listener
	ext    []string
	refuse map[string]bool // RCPT answered 550
	// mailReply, if set, replaces the reply to MAIL.
	mailReply string
	// fail421 makes the MAIL of the n-th transaction (counted from 1
	// over all connections) be answered 421, after which it hangs up.
	fail421 int

	mu       sync.Mutex
	cmds     []command
	bodies   []string
	wire     []string // the raw DATA lines, dot-stuffed as sent
	mails    int
	hangups  int // connections that ended without QUIT
	accepted int // connections accepted
}

type command struct {
	line  string
	early bool // it was already buffered when the previous reply was due
}

// serverCert is a throwaway CA, written to a file for ca_file, and a
// server certificate from it for name.
func serverCert(tb testing.TB, name string) (caFile string, cert tls.Certificate) {
	tb.Helper()
	ca, err := certgen.NewCA("upstream test CA")
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := ca.Issue(certgen.Options{CommonName: name, DNSNames: []string{name}})
	if err != nil {
		tb.Fatal(err)
	}
	caFile = filepath.Join(tb.TempDir(), "ca.pem")
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		tb.Fatal(err)
	}
	return caFile, leaf.TLSCertificate()
}

func startScripted(t *testing.T, ext ...string) (*scripted, *policy.Destination) {
	t.Helper()
	caFile, cert := serverCert(t, "mx.example.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{ln: ln, ext: ext, refuse: map[string]bool{}}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted++
			s.mu.Unlock()
			go s.serve(c)
		}
	}()
	dest, err := policy.Compile(policy.Spec{Domains: []string{"example.test"}, Upstream: ln.Addr().String(), TLS: "implicit",
		CAFile: caFile, ServerName: "mx.example.test", RequireHostname: []string{"mx.example.test"}})
	if err != nil {
		t.Fatal(err)
	}
	return s, dest
}

func (s *scripted) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	say := func(line string) { io.WriteString(c, line+"\r\n") }
	say("220 mx.example.test scripted")
	rcpts := 0
	for {
		early := r.Buffered() > 0
		line, err := r.ReadString('\n')
		if err != nil {
			s.mu.Lock()
			s.hangups++
			s.mu.Unlock()
			return
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.cmds = append(s.cmds, command{line, early})
		s.mu.Unlock()
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			lines := append([]string{"mx.example.test"}, s.ext...)
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				say("250" + sep + l)
			}
		case "MAIL":
			s.mu.Lock()
			s.mails++
			n := s.mails
			s.mu.Unlock()
			if n == s.fail421 {
				say("421 4.4.2 idle too long, closing")
				return
			}
			rcpts = 0
			if s.mailReply != "" {
				say(s.mailReply)
				continue
			}
			say("250 2.1.0 ok")
		case "RCPT":
			addr := strings.Trim(strings.TrimPrefix(strings.ToUpper(arg), "TO:"), "<>")
			if s.refuse[strings.ToLower(addr)] {
				say("550 5.1.1 no such user")
				continue
			}
			rcpts++
			say("250 2.1.5 ok")
		case "DATA":
			if rcpts == 0 {
				say("554 5.5.1 no valid recipients")
				continue
			}
			say("354 go ahead")
			var body strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					s.mu.Lock()
					s.hangups++
					s.mu.Unlock()
					return
				}
				s.mu.Lock()
				s.wire = append(s.wire, l)
				s.mu.Unlock()
				if l == ".\r\n" {
					break
				}
				body.WriteString(strings.TrimPrefix(l, "."))
			}
			s.keep(body.String())
			say("250 2.0.0 queued")
		case "BDAT":
			f := strings.Fields(arg)
			n, _ := strconv.Atoi(f[0])
			chunk := make([]byte, n)
			if _, err := io.ReadFull(r, chunk); err != nil {
				s.mu.Lock()
				s.hangups++
				s.mu.Unlock()
				return
			}
			if rcpts == 0 {
				say("554 5.5.1 no valid recipients")
				continue
			}
			s.keep(string(chunk))
			rcpts = 0
			say("250 2.0.0 queued")
		case "AUTH":
			// LOGIN only (RFC draft-murchison-sasl-login): the one mechanism
			// go-smtp's server used in tests does not speak.
			mech, ir, _ := strings.Cut(arg, " ")
			if !strings.EqualFold(mech, "LOGIN") {
				say("504 5.5.4 mechanism not supported")
				continue
			}
			var creds []string
			prompts := []string{"VXNlcm5hbWU6", "UGFzc3dvcmQ6"}
			if ir != "" { // the user name as initial response, as go-sasl sends it
				v, _ := base64.StdEncoding.DecodeString(ir)
				creds, prompts = append(creds, string(v)), prompts[1:]
			}
			for _, prompt := range prompts {
				say("334 " + prompt)
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				v, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(l))
				creds = append(creds, string(v))
			}
			if creds[0] == "relayuser" && creds[1] == "right-password" {
				say("235 2.7.0 authenticated")
			} else {
				say("535 5.7.8 authentication failed")
			}
		case "RSET":
			rcpts = 0
			say("250 2.0.0 ok")
		case "QUIT":
			say("221 2.0.0 bye")
			return
		default:
			say("502 5.5.2 unknown command")
		}
	}
}

func (s *scripted) keep(body string) {
	s.mu.Lock()
	s.bodies = append(s.bodies, body)
	s.mu.Unlock()
}

func (s *scripted) commands() []command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]command(nil), s.cmds...)
}

func (s *scripted) delivered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// lines returns the commands' lines.
func lines(cmds []command) []string {
	var out []string
	for _, c := range cmds {
		out = append(out, c.line)
	}
	return out
}

func dial(t *testing.T, dest *policy.Destination) *Conn {
	t.Helper()
	d := &Dialer{LocalName: "relay.test", Timeout: 10 * time.Second}
	c, err := d.Dial(context.Background(), dest)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func body(s string) Body {
	return Body{Size: int64(len(s)), Open: func() io.Reader { return strings.NewReader(s) }}
}

const testBody = "From: app@sender.test\r\nSubject: test\r\n\r\n.leading dot\r\nline two\r\n"

func TestSendPipelinesTheWholeTransaction(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING", "8BITMIME")
	c := dial(t, dest)
	defer c.Close()
	for i := 0; i < 2; i++ {
		res, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test", "b@example.test"}, body(testBody), false)
		if err != nil || len(res.Refused) != 0 {
			t.Fatalf("message %d: %v %v", i, err, res.Refused)
		}
	}
	cmds := up.commands()
	want := []string{"EHLO relay.test",
		"MAIL FROM:<app@sender.test> BODY=8BITMIME", "RCPT TO:<a@example.test>", "RCPT TO:<b@example.test>", fmt.Sprintf("BDAT %d LAST", len(testBody)),
		"MAIL FROM:<app@sender.test> BODY=8BITMIME", "RCPT TO:<a@example.test>", "RCPT TO:<b@example.test>", fmt.Sprintf("BDAT %d LAST", len(testBody))}
	if got := lines(cmds); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("commands:\n got %q\nwant %q", got, want)
	}
	// Everything after MAIL was on the wire before MAIL was answered: one
	// round trip per message, and no RSET between completed transactions.
	for _, c := range cmds {
		if !strings.HasPrefix(c.line, "MAIL") && !strings.HasPrefix(c.line, "EHLO") && !c.early {
			t.Errorf("%q waited for the previous reply: not pipelined", c.line)
		}
	}
	got := up.delivered()
	if len(got) != 2 || got[0] != testBody || got[1] != testBody {
		t.Fatalf("delivered %q", got)
	}
}

func TestSendWithoutExtensionsFallsBackToDATA(t *testing.T) {
	up, dest := startScripted(t, "8BITMIME")
	c := dial(t, dest)
	defer c.Close()
	res, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reply != "2.0.0 queued" {
		t.Errorf("reply %q", res.Reply)
	}
	for _, c := range up.commands() {
		if c.early {
			t.Errorf("%q was sent before the previous reply, to a server without PIPELINING", c.line)
		}
		if strings.HasPrefix(c.line, "BDAT") {
			t.Errorf("BDAT sent to a server without CHUNKING")
		}
	}
	up.mu.Lock()
	wire := strings.Join(up.wire, "")
	up.mu.Unlock()
	if !strings.Contains(wire, "\r\n..leading dot\r\n") {
		t.Errorf("the leading dot was not doubled on the wire: %q", wire)
	}
	if got := up.delivered(); len(got) != 1 || got[0] != testBody {
		t.Fatalf("delivered %q", got)
	}
}

func TestSendPipeliningWithoutChunkingWaitsForDATA(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING")
	c := dial(t, dest)
	defer c.Close()
	if _, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false); err != nil {
		t.Fatal(err)
	}
	want := []string{"EHLO relay.test", "MAIL FROM:<app@sender.test>", "RCPT TO:<a@example.test>", "DATA"}
	if got := lines(up.commands()); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("commands %q, want %q", got, want)
	}
	if cmds := up.commands(); !cmds[2].early {
		t.Error("RCPT was not pipelined with MAIL")
	}
	if got := up.delivered(); len(got) != 1 || got[0] != testBody {
		t.Fatalf("delivered %q", got)
	}
}

func TestSendAllOrNothingHoldsTheBodyBack(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING")
	up.refuse["b@example.test"] = true
	c := dial(t, dest)
	defer c.Close()
	res, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test", "b@example.test"}, body(testBody), true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Refused["b@example.test"] == nil || res.Refused["a@example.test"] != nil {
		t.Fatalf("refused %v", res.Refused)
	}
	if got := up.delivered(); len(got) != 0 {
		t.Fatalf("a body was delivered although a recipient was refused: %q", got)
	}
	for _, c := range up.commands() {
		if strings.HasPrefix(c.line, "BDAT") || c.line == "DATA" {
			t.Fatalf("%q sent in an all-or-nothing transaction with a refused recipient", c.line)
		}
	}
	// The unfinished transaction is reset, in the same write as the next.
	if _, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), true); err != nil {
		t.Fatal(err)
	}
	cmds := up.commands()
	if i := len(cmds) - 4; cmds[i].line != "RSET" || !cmds[i+1].early {
		t.Fatalf("next transaction: %q", lines(cmds[i:]))
	}
	if got := up.delivered(); len(got) != 1 {
		t.Fatalf("delivered %d after the reset", len(got))
	}
}

func TestSendRefusedSoleRecipientDeliversNothing(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING")
	up.refuse["b@example.test"] = true
	c := dial(t, dest)
	defer c.Close()
	res, err := c.Send(context.Background(), "app@sender.test", []string{"b@example.test"}, body(testBody), true)
	if err != nil || res.Refused["b@example.test"] == nil {
		t.Fatalf("%v %v", err, res.Refused)
	}
	if f := res.Refused["b@example.test"]; f.Class != policy.UpstreamPermanent || !strings.Contains(f.Detail, "5.1.1 no such user") {
		t.Errorf("refusal %+v", f)
	}
	if got := up.delivered(); len(got) != 0 {
		t.Fatalf("delivered %q", got)
	}
}

func TestSendShortBodyIsNeverDelivered(t *testing.T) {
	// The large body is cut short while its TLS records are being
	// gathered into large writes.
	large := strings.Repeat(strings.Repeat("s", 78)+"\r\n", 5000)
	for _, tc := range []struct {
		name string
		ext  []string
		msg  string
	}{
		{"PIPELINING+CHUNKING", []string{"PIPELINING", "CHUNKING"}, testBody},
		{"PIPELINING", []string{"PIPELINING"}, testBody},
		{"large body, PIPELINING+CHUNKING", []string{"PIPELINING", "CHUNKING"}, large},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, dest := startScripted(t, tc.ext...)
			c := dial(t, dest)
			msg := tc.msg
			short := Body{Size: int64(len(msg)) + 100, Open: func() io.Reader { return strings.NewReader(msg) }}
			_, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, short, false)
			var f *policy.Failure
			if !errors.As(err, &f) || !strings.Contains(f.Detail, "spooled message could not be read back") {
				t.Fatalf("error %v", err)
			}
			c.Close()
			deadline := time.Now().Add(5 * time.Second)
			for {
				up.mu.Lock()
				h := up.hangups
				up.mu.Unlock()
				if h > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the connection was not dropped")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if got := up.delivered(); len(got) != 0 {
				t.Fatalf("a short body was delivered: %d messages", len(got))
			}
			for _, c := range up.commands() {
				if c.line == "QUIT" {
					t.Error("QUIT sent over a connection out of step")
				}
			}
		})
	}
}

func TestSendStaleConnection(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING")
	up.fail421 = 2
	c := dial(t, dest)
	defer c.Close()
	if _, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false); err != nil {
		t.Fatal(err)
	}
	_, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false)
	if !errors.Is(err, ErrConnStale) {
		t.Fatalf("a 421 on a reused connection: %v, want ErrConnStale", err)
	}
	// A fresh connection is never called stale: its failure is real.
	up.fail421 = 3
	fresh := dial(t, dest)
	defer fresh.Close()
	_, err = fresh.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false)
	if err == nil || errors.Is(err, ErrConnStale) {
		t.Fatalf("a 421 on a fresh connection: %v", err)
	}
	if got := up.delivered(); len(got) != 1 {
		t.Fatalf("delivered %d, want 1", len(got))
	}
}

func TestSendCancelledByContext(t *testing.T) {
	_, dest := startScripted(t, "PIPELINING", "CHUNKING")
	c := dial(t, dest)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	big := strings.Repeat("0123456789012345678901234567890123456789012345678901234567890123456789\r\n", 1<<16)
	_, err := c.Send(ctx, "app@sender.test", []string{"a@example.test"}, body(big), false)
	if err == nil {
		t.Fatal("a cancelled delivery went through")
	}
}

func TestAuthLogin(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING", "AUTH LOGIN")
	dest.AuthUsername = "relayuser"
	for _, tc := range []struct {
		password string
		ok       bool
	}{{"right-password", true}, {"wrong-password", false}} {
		dest.AuthPassword = policy.Secret(tc.password)
		c, err := (&Dialer{LocalName: "relay.test", Timeout: 10 * time.Second}).Dial(context.Background(), dest)
		if tc.ok {
			if err != nil {
				t.Fatalf("good password: %v", err)
			}
			c.Close()
			continue
		}
		var f *policy.Failure
		if !errors.As(err, &f) || f.Class != policy.Auth || f.Permanent || !strings.Contains(f.Detail, "535") {
			t.Fatalf("wrong password: %v, want a temporary auth failure naming the reply", err)
		}
		if strings.Contains(f.Error(), tc.password) {
			t.Fatal("the password appears in the failure")
		}
	}
	var logins int
	for _, c := range up.commands() {
		if strings.HasPrefix(c.line, "AUTH LOGIN") {
			logins++
		}
	}
	if logins != 2 {
		t.Fatalf("%d AUTH LOGIN commands, want 2", logins)
	}
}

func TestSendRefusesAnEndlessReply(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING")
	up.mailReply = "250 " + strings.Repeat("x", 1<<20)
	c := dial(t, dest)
	defer c.Close()
	_, err := c.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false)
	if !errors.Is(err, errReplyTooLong) {
		t.Fatalf("a 1 MiB reply line: %v, want errReplyTooLong", err)
	}
	// A long but bounded multi-line reply is fine.
	up.mailReply = strings.Repeat("250-"+strings.Repeat("y", 900)+"\r\n", 40) + "250 ok"
	fresh := dial(t, dest)
	defer fresh.Close()
	if _, err := fresh.Send(context.Background(), "app@sender.test", []string{"a@example.test"}, body(testBody), false); err != nil {
		t.Fatalf("a 36 KiB reply: %v", err)
	}
}
