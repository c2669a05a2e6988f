// Package upstream opens verified TLS connections to next-hop SMTP servers
// and sends messages over them. Every connection it returns has passed the
// complete verification of its destination's policy (policy.Destination);
// there is no code path that sends a byte of mail or a password otherwise.
package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/oauth"
)

// Dialer opens verified connections to upstreams.
type Dialer struct {
	// LocalName is sent in EHLO; it should be the relay's host name.
	LocalName string
	// Timeout bounds connecting, the greeting, STARTTLS and the handshake.
	Timeout time.Duration
	// Clock is the time certificates are verified at; nil means now.
	Clock policy.Clock
	// Tokens provides the access tokens of OAuth destinations.
	Tokens *oauth.Registry
}

// Conn is an SMTP connection to an upstream whose TLS has been verified.
type Conn struct {
	Dest *policy.Destination
	// TLS is the state of the verified connection.
	TLS tls.ConnectionState
	// Greeting is the upstream's banner; PlainExtensions the EHLO keywords
	// it offered before TLS (STARTTLS mode only).
	Greeting        string
	PlainExtensions []string
	// Established is when the connection was verified.
	Established time.Time

	raw net.Conn          // the TCP connection
	tc  *tls.Conn         // the verified TLS connection over it
	r   *textproto.Reader // replies, read from tc
	// budget bounds what one reply may make r read.
	budget *budgetReader
	w      *bufio.Writer     // commands and bodies, written to tc
	ext    map[string]string // EHLO keywords offered over TLS, upper case
	// sent counts the messages sent over this connection.
	sent int
	// open is set while a transaction is unfinished (MAIL said, no final
	// reply to the body yet): the next one must start with RSET.
	open bool
	// broken is set when the dialogue is out of step (an I/O error, a
	// body cut short): the connection is closed without a word.
	broken bool
}

// Dial connects to dest's upstream, starts TLS as the policy says, verifies
// it completely, says EHLO over TLS and authenticates if the policy has
// credentials. Any failure is a *policy.Failure.
func (d *Dialer) Dial(ctx context.Context, dest *policy.Destination) (*Conn, error) {
	conn, err := d.dialTLS(ctx, dest, nil)
	if err != nil {
		return nil, err
	}
	if dest.LogsIn() {
		if err := conn.auth(ctx, d.Tokens); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// dialTLS connects, starts TLS, verifies it and says EHLO over it. observe,
// if set, sees the TLS state before verification judges it (the check
// command shows what the server sent even when it fails).
func (d *Dialer) dialTLS(ctx context.Context, dest *policy.Destination, observe func(tls.ConnectionState)) (*Conn, error) {
	clock := d.clock()
	cfg := dest.ClientConfig(clock)
	if observe != nil {
		verify := cfg.VerifyConnection
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			observe(cs)
			return verify(cs)
		}
	}
	conn, err := d.handshake(ctx, dest, cfg)
	if err != nil {
		var f *policy.Failure
		if !errors.As(err, &f) {
			err = d.diagnoseHandshake(ctx, dest, err)
		}
		return conn, err // conn, if any, only tells what was learned; it is closed
	}
	// Verification already ran inside the handshake; running it once more
	// on the final state makes "this connection is verified" a fact checked
	// right here, not an assumption about crypto/tls's callbacks.
	if err := dest.VerifyState(conn.TLS, clock); err != nil {
		conn.Close()
		return nil, err
	}
	conn.Established = clock()

	conn.raw.SetDeadline(time.Now().Add(commandTimeout))
	if err := conn.ehlo(d.LocalName); err != nil {
		conn.broken = true
		conn.Close()
		return nil, smtpFailure(dest, "EHLO after TLS", err)
	}
	conn.raw.SetDeadline(time.Time{})
	return conn, nil
}

func (d *Dialer) clock() policy.Clock {
	if d.Clock == nil {
		return time.Now
	}
	return d.Clock
}

// handshake connects and completes the TLS handshake with cfg. A non-TLS
// problem (connect, greeting, no STARTTLS) comes back as a *policy.Failure;
// a handshake error comes back raw for diagnoseHandshake. On failure the
// returned Conn, if not nil, is closed and only records what the server
// said before TLS.
func (d *Dialer) handshake(ctx context.Context, dest *policy.Destination, cfg *tls.Config) (*Conn, error) {
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	var nd net.Dialer
	raw, err := nd.DialContext(ctx, "tcp", dest.Upstream)
	if err != nil {
		return nil, &policy.Failure{Class: policy.Connect, Host: dest.Upstream, Err: err,
			Detail: fmt.Sprintf("cannot connect: %v", err),
			Fix:    "check that the upstream host name resolves and that its port is reachable from this machine (firewall, port number)"}
	}
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	c := &Conn{Dest: dest, raw: raw}
	if dest.Mode == policy.StartTLS {
		if err := c.startTLS(d.LocalName); err != nil {
			raw.Close()
			return c, err
		}
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return c, err
	}
	c.TLS = tc.ConnectionState()
	c.tc = tc
	c.newWire()
	if dest.Mode == policy.Implicit {
		// With implicit TLS the banner comes over TLS; after STARTTLS
		// there is none (the plaintext one was read by startTLS).
		rep, err := c.readReply()
		if err != nil || rep.code != 220 {
			raw.Close()
			if err == nil {
				err = rep.err()
			}
			return nil, smtpFailure(dest, "greeting", err)
		}
		c.Greeting = firstLine(rep.text)
	}
	tc.SetDeadline(time.Time{})
	return c, nil
}

// startTLS runs the plaintext part of a STARTTLS session: greeting, EHLO,
// STARTTLS. It is done here rather than by go-smtp's client so that the
// EHLO carries our name and the TLS handshake is ours to run and check
// before anything else is said.
func (c *Conn) startTLS(localName string) error {
	dest := c.Dest
	tp := textproto.NewConn(c.raw)
	_, msg, err := tp.ReadResponse(220)
	if err != nil {
		return smtpFailure(dest, "greeting", err)
	}
	c.Greeting = firstLine(msg)
	if err := tp.PrintfLine("EHLO %s", localName); err != nil {
		return smtpFailure(dest, "EHLO", err)
	}
	_, msg, err = tp.ReadResponse(250)
	if err != nil {
		return smtpFailure(dest, "EHLO", err)
	}
	offered := false
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		kw := strings.ToUpper(strings.Fields(l + " x")[0])
		c.PlainExtensions = append(c.PlainExtensions, l)
		if kw == "STARTTLS" {
			offered = true
		}
	}
	if !offered {
		return &policy.Failure{Class: policy.StartTLSMissing, Host: dest.Upstream,
			Detail: fmt.Sprintf("the server did not offer STARTTLS (it offered: %s); refused to send in plaintext", strings.Join(c.PlainExtensions, ", ")),
			Fix:    "enable STARTTLS on the server, or find what between here and there strips it (a firewall's SMTP inspection often does); if the server does TLS from the first byte, set tls = \"implicit\""}
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return smtpFailure(dest, "STARTTLS", err)
	}
	if _, _, err := tp.ReadResponse(220); err != nil {
		f := smtpFailure(dest, "STARTTLS", err)
		f.Class = policy.StartTLSMissing
		f.Fix = "the server advertised STARTTLS but refused it; check its TLS configuration (certificate and key loaded)"
		return f
	}
	// Anything already buffered arrived before TLS but would be read as if
	// it came after: the command injection of CVE-2011-0411. Refuse.
	if tp.R.Buffered() > 0 {
		return &policy.Failure{Class: policy.Handshake, Host: dest.Upstream,
			Detail: "the server (or something in between) sent data after the STARTTLS reply, before the handshake",
			Fix:    "this is a sign of tampering or a broken server; do not use this path until it is explained"}
	}
	return nil
}

// diagnoseHandshake turns a failed handshake into a verdict. Whether the
// server refused the TLS version cannot be read from the error (servers
// send an alert or just close), so a second connection asks the server,
// with only older versions offered, whether it would have agreed to one.
func (d *Dialer) diagnoseHandshake(ctx context.Context, dest *policy.Destination, hsErr error) error {
	cfg, agreed := dest.VersionProbe()
	_, probeErr := d.handshake(ctx, dest, cfg)
	if probeErr == nil {
		probeErr = errors.New("probe unexpectedly completed") // cannot happen: the probe always aborts
	}
	if ok, v := agreed(probeErr); ok {
		return dest.VersionFailure(v, hsErr)
	}
	return dest.HandshakeFailure(hsErr)
}

// Close ends the connection politely if it can (QUIT, TLS close_notify),
// and always closes it.
func (c *Conn) Close() error {
	if c.tc == nil || c.broken {
		return c.raw.Close()
	}
	c.quit()
	return c.tc.Close()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
