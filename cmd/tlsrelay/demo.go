package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay"
	"tlsrelay/relay/config"
	"tlsrelay/relay/sink"
)

// cmdDemo runs the real relay, policy and queue code against two upstream
// servers started in this process on loopback, under a throwaway CA: one
// healthy, one whose certificate has expired.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", stderr)
	listen := fs.String("listen", "127.0.0.1:2525", "`address` for the relay's SMTP port")
	once := fs.Bool("once", false, "exit after the two demo messages instead of waiting for Ctrl-C")
	if rc := parseFlags(fs, args, 0); rc != 0 {
		return max(rc, 0)
	}
	if err := runDemo(*listen, *once, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "tlsrelay demo:", err)
		return 1
	}
	return 0
}

func runDemo(listen string, once bool, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "tlsrelay-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ca, err := certgen.NewCA("tlsrelay demo CA (throwaway)")
	if err != nil {
		return err
	}
	now := time.Now()
	good, err := ca.Issue(certgen.Options{CommonName: "mail.healthy.demo", DNSNames: []string{"mail.healthy.demo"}})
	if err != nil {
		return err
	}
	expired, err := ca.Issue(certgen.Options{CommonName: "mail.expired.demo", DNSNames: []string{"mail.expired.demo"},
		NotBefore: now.Add(-400 * 24 * time.Hour), NotAfter: now.Add(-3 * 24 * time.Hour)})
	if err != nil {
		return err
	}
	caFile := filepath.Join(dir, "demo-ca.pem")
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		return err
	}

	received := make(chan sink.Message, 16)
	healthy, err := sink.Start(sink.Options{Hostname: "mail.healthy.demo", Cert: good.TLSCertificate(),
		OnMessage: func(m sink.Message) { received <- m }})
	if err != nil {
		return err
	}
	defer healthy.Close()
	broken, err := sink.Start(sink.Options{Hostname: "mail.expired.demo", Cert: expired.TLSCertificate()})
	if err != nil {
		return err
	}
	defer broken.Close()

	cfgPath := filepath.Join(dir, "tlsrelay.toml")
	cfgText := fmt.Sprintf(demoConfig, listen, filepath.Join(dir, "spool"),
		healthy.Addr(), caFile, broken.Addr(), caFile)
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	log, _ := newLogger(stderr, "info", "auto")
	r, err := relay.New(cfg, relay.Options{Logger: log})
	if err != nil {
		return err
	}
	if err := r.Start(); err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("%w\n(is another relay running? try: tlsrelay demo -listen 127.0.0.1:2526)", err)
		}
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	}()
	addr := r.Addr().String()

	fmt.Fprintf(stdout, `
tlsrelay demo: the real relay, policy and queue, with two upstreams on this machine.
  relay       %s   plain SMTP in, as a legacy application speaks it
  upstream 1  mail.healthy.demo at %s   certificate from the demo CA, valid
  upstream 2  mail.expired.demo at %s   certificate from the demo CA, expired %s
  policy      %s
              (ca_file trusts only the throwaway demo CA; require_hostname names each server)

`, addr, healthy.Addr(), broken.Addr(), expired.Cert.NotAfter.UTC().Format("2006-01-02"), cfgPath)

	fmt.Fprintln(stdout, "1) app -> relay: a message to alice@healthy.demo")
	reply, err := demoSend(addr, "alice@healthy.demo", "Hello from the tlsrelay demo")
	fmt.Fprintf(stdout, "   relay answered: %s\n", describeReply(reply, err))
	select {
	case m := <-received:
		fmt.Fprintf(stdout, "   upstream mail.healthy.demo received it over %s (%s); certificate verified against the demo CA, name mail.healthy.demo checked.\n",
			tls.VersionName(m.TLS.Version), tls.CipherSuiteName(m.TLS.CipherSuite))
	case <-time.After(15 * time.Second):
		fmt.Fprintln(stdout, "   not delivered within 15s; see the log lines above for why.")
	}

	fmt.Fprintln(stdout, "\n2) app -> relay: a message to bob@expired.demo (this destination uses on_failure = \"reject\")")
	reply, err = demoSend(addr, "bob@expired.demo", "This one must not be sent")
	fmt.Fprintf(stdout, "   relay answered: %s\n", describeReply(reply, err))
	fmt.Fprintf(stdout, "   upstream mail.expired.demo received %d messages: the relay never falls back to unverified TLS.\n", broken.Count())

	if once {
		return nil
	}
	host, port, _ := net.SplitHostPort(addr)
	fmt.Fprintf(stdout, `
The relay keeps running. Send more with any SMTP client, for example:
  swaks --server %s --from you@example.org --to carol@healthy.demo
  python3 -c 'import smtplib; smtplib.SMTP("%s", %s).sendmail("you@example.org", ["dave@expired.demo"], "Subject: hi\r\n\r\nhello\r\n")'
Recipients under healthy.demo are delivered; expired.demo is refused with the reason; other domains are refused (no open relay).
Press Ctrl-C to stop.
`, addr, host, port)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	for {
		select {
		case m := <-received:
			fmt.Fprintf(stdout, "upstream mail.healthy.demo received a message from <%s> to %s over %s\n",
				m.From, strings.Join(m.To, ", "), tls.VersionName(m.TLS.Version))
		case <-sigs:
			fmt.Fprintln(stdout, "\nstopping; the demo's temporary files are removed.")
			return nil
		case err := <-r.Done():
			return err
		}
	}
}

const demoConfig = `# Written by tlsrelay demo; a real configuration looks the same.
[server]
listen = %q
hostname = "tlsrelay-demo.local"

[queue]
dir = %q
retry_min = "5s"
retry_max = "1m"

[log]
level = "info"

[[destination]]
domains = ["healthy.demo"]
upstream = %q
tls = "starttls"
ca_file = %q
server_name = "mail.healthy.demo"
require_hostname = ["mail.healthy.demo"]
on_failure = "queue"

[[destination]]
domains = ["expired.demo"]
upstream = %q
tls = "starttls"
ca_file = %q
server_name = "mail.expired.demo"
require_hostname = ["mail.expired.demo"]
on_failure = "reject"
`

// demoSend submits a message the way a legacy application would: plain
// SMTP, no TLS, and returns the relay's reply to DATA.
func demoSend(addr, to, subject string) (string, error) {
	c, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Hello("legacy-app.local"); err != nil {
		return "", err
	}
	if err := c.Mail("app@legacy.example", nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "From: app@legacy.example\r\nTo: %s\r\nSubject: %s\r\n\r\nSent through tlsrelay.\r\n", to, subject)
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	c.Quit()
	return resp.StatusText, nil
}

func describeReply(text string, err error) string {
	if err == nil {
		return "250 " + text
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2],
			strings.ReplaceAll(se.Message, "\n", "\n                   "))
	}
	return err.Error()
}
