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
	// DialContext, if set, opens the TCP connections (tests reach mail
	// exchangers' port 25 on loopback through it); nil: net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
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

	raw net.Conn  // the TCP connection
	tc  *tls.Conn // the verified TLS connection over it
	// cork gathers tc's records into large writes while a body is sent.
	cork *corkConn
	br   *bufio.Reader // replies, read from raw before TLS and tc after
	// budget bounds what one reply may make br read.
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
		if f, ok := policy.AsFailure(err); ok && dest.MXHost() != nil && f.Result == "" {
			f.Result = f.RPT() // a mail exchanger's failure carries its TLS-RPT result type
		}
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
	chains, err := dest.VerifyState(conn.TLS, clock)
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.TLS.VerifiedChains = chains
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
	dial := d.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	raw, err := dial(ctx, "tcp", dest.DialAddr())
	if err != nil {
		return nil, &policy.Failure{Class: policy.Connect, Host: dest.Upstream, Err: err,
			Detail: fmt.Sprintf("cannot connect: %v", err),
			Fix:    "check that the upstream host name resolves and that its port is reachable from this machine (firewall, port number)"}
	}
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	// A cancelled ctx (shutdown, a reload retiring this policy) interrupts
	// the plaintext phase too, not only the dial and the handshake.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	c := &Conn{Dest: dest, raw: raw}
	if dest.Mode == policy.StartTLS {
		if err := c.startTLS(d.LocalName, d.Timeout); err != nil {
			raw.Close()
			return c, err
		}
	}
	c.cork = &corkConn{Conn: raw}
	tc := tls.Client(c.cork, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return c, err
	}
	c.TLS = tc.ConnectionState()
	c.tc = tc
	c.newWire(tc)
	if dest.Mode == policy.Implicit {
		// With implicit TLS the banner comes over TLS; after STARTTLS
		// there is none (the plaintext one was read by startTLS).
		rep, err := c.readReply()
		if err != nil {
			raw.Close()
			return nil, dialFailure(dest, "greeting", d.Timeout, err)
		}
		if rep.code != 220 {
			raw.Close()
			return nil, smtpFailure(dest, "greeting", rep.err())
		}
		c.Greeting = firstLine(rep.text)
	}
	tc.SetDeadline(time.Time{})
	return c, nil
}

// startTLS runs the plaintext part of a STARTTLS session: greeting, EHLO,
// STARTTLS. It is done here rather than by go-smtp's client so that the
// EHLO carries our name and the TLS handshake is ours to run and check
// before anything else is said. Its replies are read with the same bounds
// as after TLS (readReply): before TLS, anyone on the path can write them.
// timeout is connect_timeout, for the words of a failure.
func (c *Conn) startTLS(localName string, timeout time.Duration) error {
	dest := c.Dest
	c.newWire(c.raw)
	rep, err := c.readReply()
	if err != nil {
		return dialFailure(dest, "greeting", timeout, err)
	}
	c.Greeting = firstLine(rep.text)
	if rep.code != 220 {
		return plainRefusal(dest, "its greeting", rep)
	}
	rep, err = c.cmd("EHLO " + localName)
	if err != nil {
		return dialFailure(dest, "EHLO", timeout, err)
	}
	if rep.code != 250 {
		return plainRefusal(dest, "EHLO", rep)
	}
	offered := false
	lines := strings.Split(rep.text, "\n")
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
	rep, err = c.cmd("STARTTLS")
	if err != nil {
		return dialFailure(dest, "STARTTLS", timeout, err)
	}
	switch {
	case rep.code/100 == 4 || rep.code/100 == 5:
		return &policy.Failure{Class: policy.StartTLSMissing, Host: dest.Upstream, Err: rep.err(),
			Detail: fmt.Sprintf("the server refused STARTTLS: %d %s", rep.code, clipLine(firstLine(rep.text))),
			Fix:    "the server advertised STARTTLS but refused it; check its TLS configuration (certificate and key loaded)"}
	case rep.code != 220:
		return &policy.Failure{Class: policy.Protocol, Host: dest.Upstream, Err: rep.err(),
			Detail: fmt.Sprintf("the server answered STARTTLS with %d %s, not 220; TLS was not started", rep.code, clipLine(firstLine(rep.text))),
			Fix:    "this is not how an SMTP server answers STARTTLS; check what answers on this address and port"}
	}
	// Anything already buffered arrived before TLS but would be read as if
	// it came after: the command injection of CVE-2011-0411. Refuse.
	if c.br.Buffered() > 0 {
		return &policy.Failure{Class: policy.Handshake, Host: dest.Upstream,
			Detail: "the server (or something in between) sent data after the STARTTLS reply, before the handshake",
			Fix:    "this is a sign of tampering or a broken server; do not use this path until it is explained"}
	}
	return nil
}

// dialFailure names a failure to read a reply (or to write a command)
// while connecting: before TLS, or the greeting over implicit TLS. A
// timeout is the server not answering within connect_timeout, a close or
// reset the connection breaking, a reply over the bounds or not in SMTP's
// form a protocol failure; none of them is a refusal.
func dialFailure(dest *policy.Destination, stage string, timeout time.Duration, err error) *policy.Failure {
	f := &policy.Failure{Host: dest.Upstream, Err: err}
	within := "within connect_timeout"
	if timeout > 0 {
		within += " (" + timeout.String() + ")"
	}
	var ne net.Error
	switch {
	case errors.Is(err, errReplyTooLong):
		f.Class = policy.Protocol
		f.Detail = fmt.Sprintf("the server's reply to %s is not an SMTP reply: %v", stage, err)
		f.Fix = "an SMTP server's replies are a few short lines; check what answers on this address and port, and whether something on the path rewrites the dialogue"
	case errors.Is(err, errMalformedReply):
		f.Class = policy.Protocol
		f.Detail = fmt.Sprintf("the server's reply to %s is not an SMTP reply: %v", stage, err)
		f.Fix = "check that this address and port are an SMTP server's (and, for tls = \"implicit\", one that does TLS from the first byte)"
	case errors.As(err, &ne) && ne.Timeout():
		f.Class = policy.Connect
		if stage == "greeting" {
			f.Detail = "the server accepted the connection but sent no complete greeting " + within
		} else {
			f.Detail = fmt.Sprintf("the server sent no complete reply to %s %s", stage, within)
		}
		f.Fix = "the server is overloaded or hangs, or something on the path holds the connection; check the server, or raise connect_timeout if it is merely slow"
	default:
		f.Class = policy.Connect
		if stage == "greeting" {
			f.Detail = fmt.Sprintf("the connection broke before the server's greeting was complete: %v", err)
		} else {
			f.Detail = fmt.Sprintf("the connection broke at %s, before a complete reply: %v", stage, err)
		}
		f.Fix = "the server (or something on the path) closed or reset the connection; check the server's logs and limits (connection rate, client address); the relay will retry"
	}
	return f
}

// plainRefusal is a reply other than the expected one to the greeting or
// EHLO before TLS: 4xx and 5xx are named as the upstream's answers, but
// never make a message bounce, since anyone on the path can write them.
func plainRefusal(dest *policy.Destination, stage string, rep reply) *policy.Failure {
	if rep.code/100 != 4 && rep.code/100 != 5 {
		return &policy.Failure{Class: policy.Protocol, Host: dest.Upstream, Err: rep.err(),
			Detail: fmt.Sprintf("the server answered %s with %d %s, which SMTP does not allow there", stage, rep.code, clipLine(firstLine(rep.text))),
			Fix:    "check what answers on this address and port"}
	}
	f := smtpFailure(dest, stage, rep.err())
	if f.Permanent {
		f.Permanent = false
		f.Detail += " (before TLS, so it is not trusted to bounce mail; the relay retries)"
	}
	return f
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
