// Package sink is a small SMTP server that receives mail over TLS and
// keeps it: the upstream of `tlsrelay demo`, of the tests and of the
// benchmark tool. It is a real go-smtp server on a real socket, with
// STARTTLS or implicit TLS.
package sink

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message the sink received.
type Message struct {
	From string
	To   []string
	Data []byte
	TLS  tls.ConnectionState
	User string // the AUTH identity, if any
	UTF8 bool   // MAIL FROM carried SMTPUTF8
	// RequireTLS: MAIL FROM carried REQUIRETLS.
	RequireTLS bool
}

// Options configure a Sink.
type Options struct {
	// Addr to listen on; default 127.0.0.1:0.
	Addr string
	// Hostname for the banner.
	Hostname string
	// Cert is the server certificate (with its chain as it should be sent).
	Cert tls.Certificate
	// Implicit serves TLS from the first byte instead of STARTTLS.
	Implicit bool
	// NoTLS serves plain SMTP without offering STARTTLS: a stripped or
	// misconfigured server, which tlsrelay must refuse.
	NoTLS bool
	// MinVersion and MaxVersion bound the server's TLS versions.
	MinVersion, MaxVersion uint16
	// Users, if set, enables AUTH PLAIN (after TLS) with these passwords.
	Users map[string]string
	// OAuth, if set, enables AUTH XOAUTH2 and OAUTHBEARER (after TLS).
	OAuth *OAuthOptions
	// Refuse, if set, decides per recipient: a non-nil error refuses it.
	Refuse func(rcpt string) *smtp.SMTPError
	// RefuseMail, if set, decides per sender: a non-nil error refuses the
	// whole transaction at MAIL.
	RefuseMail func(from string) *smtp.SMTPError
	// RefuseData, if set, decides the reply to the end of the data: a
	// non-nil error refuses the message (it is not kept).
	RefuseData func() *smtp.SMTPError
	// Discard counts messages without keeping them (for load tests).
	Discard bool
	// OnMessage, if set, is called for every message received.
	OnMessage func(Message)
	// IdleTimeout closes a connection idle this long (default 1 minute),
	// as real servers do.
	IdleTimeout time.Duration
	// SMTPUTF8 offers SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// REQUIRETLS offers REQUIRETLS (RFC 8689) inside TLS.
	REQUIRETLS bool
	// RecordCommands keeps every MAIL and RCPT command line as received,
	// for Commands. The lines are taken from go-smtp's debug stream of all
	// connections, so use it with one connection at a time; message lines
	// that begin like a MAIL or RCPT command are listed too.
	RecordCommands bool
}

// Sink is a running SMTP server that keeps what it receives.
type Sink struct {
	opts   Options
	server *smtp.Server
	ln     net.Listener

	mu       sync.Mutex
	messages []Message
	count    int
	sessions int
	live     map[*trackedConn]bool // open connections
	refused  int                   // OAuth tokens refused
	peak     int                   // the most connections open at once
	arrived  chan struct{}
	// stream is go-smtp's debug stream, with RecordCommands.
	stream bytes.Buffer
}

// Start listens and serves until Close.
func Start(o Options) (*Sink, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Hostname == "" {
		o.Hostname = "sink.test"
	}
	s := &Sink{opts: o, arrived: make(chan struct{}, 1)}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{sink: s, conn: c}, nil
	}))
	srv.Domain = o.Hostname
	srv.MaxMessageBytes = 1 << 30
	srv.ReadTimeout = time.Minute
	if o.IdleTimeout > 0 {
		srv.ReadTimeout = o.IdleTimeout
	}
	srv.WriteTimeout = time.Minute
	srv.ErrorLog = discardLogger{}
	srv.EnableSMTPUTF8 = o.SMTPUTF8
	srv.EnableREQUIRETLS = o.REQUIRETLS
	if o.RecordCommands {
		srv.Debug = streamWriter{s}
	}
	if o.OAuth != nil {
		// Access tokens are long (Entra's are 2-3 KB): allow the AUTH line
		// RFC 4954 allows (12,288 octets).
		srv.MaxLineLength = 12288
	}
	var tcfg *tls.Config
	if !o.NoTLS {
		tcfg = &tls.Config{Certificates: []tls.Certificate{o.Cert}, MinVersion: o.MinVersion, MaxVersion: o.MaxVersion}
		if tcfg.MinVersion == 0 {
			tcfg.MinVersion = tls.VersionTLS10
		}
		if tcfg.MinVersion < tls.VersionTLS12 {
			// Old versions need old suites; offer them so a deliberately old
			// server behaves like the real thing.
			for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
				tcfg.CipherSuites = append(tcfg.CipherSuites, cs.ID)
			}
		}
	}
	raw, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, err
	}
	var ln net.Listener = &trackingListener{Listener: raw, sink: s}
	if o.Implicit && tcfg != nil {
		ln = tls.NewListener(ln, tcfg)
	} else {
		srv.TLSConfig = tcfg
	}
	srv.AllowInsecureAuth = false
	s.server, s.ln = srv, ln
	go srv.Serve(ln)
	return s, nil
}

// Addr returns the host:port the sink listens on.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// Close stops the server and ends its sessions. It closes each session's
// connection itself and waits for the session to end before go-smtp's
// Server.Close runs: that one closes sessions from another goroutine while
// they may be inside BDAT or STARTTLS, which go-smtp v0.25.1 does not
// guard (the race detector reports it), and tests close a sink in the
// middle of deliveries to play an upstream going away.
func (s *Sink) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.live {
		c.Conn.Close()
	}
	s.mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		n := len(s.live)
		s.mu.Unlock()
		if n == 0 {
			break
		}
	}
	s.server.Close()
	return err
}

// Messages returns a copy of what was received so far.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Commands returns the MAIL and RCPT command lines received so far, as
// they were on the wire (without CRLF); it needs RecordCommands.
func (s *Sink) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range strings.Split(s.stream.String(), "\r\n") {
		if u := strings.ToUpper(l); strings.HasPrefix(u, "MAIL FROM:") || strings.HasPrefix(u, "RCPT TO:") {
			out = append(out, l)
		}
	}
	return out
}

// streamWriter keeps go-smtp's debug stream (what the sink reads and
// writes, after TLS) for Commands.
type streamWriter struct{ s *Sink }

func (w streamWriter) Write(b []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.stream.Write(b)
}

// trackingListener counts the connections the sink accepts and keeps the
// open ones, for Close.
type trackingListener struct {
	net.Listener
	sink *Sink
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, sink: l.sink}
	l.sink.mu.Lock()
	l.sink.sessions++
	if l.sink.live == nil {
		l.sink.live = map[*trackedConn]bool{}
	}
	l.sink.live[tc] = true
	l.sink.peak = max(l.sink.peak, len(l.sink.live))
	l.sink.mu.Unlock()
	return tc, nil
}

// trackedConn leaves the sink's open set when its session closes it.
type trackedConn struct {
	net.Conn
	sink *Sink
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.sink.mu.Lock()
	delete(c.sink.live, c)
	c.sink.mu.Unlock()
	return err
}

// Sessions returns the number of connections accepted so far.
func (s *Sink) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

func (s *Sink) refusedToken() {
	s.mu.Lock()
	s.refused++
	s.mu.Unlock()
}

// RefusedTokens returns how many OAuth logins were refused for a token
// that was not valid (expired, revoked, or for another mailbox).
func (s *Sink) RefusedTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// PeakSessions returns the most connections that were open at once.
func (s *Sink) PeakSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// Count returns the number of messages received, kept or discarded.
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Wait blocks until at least n messages arrived or the timeout passes, and
// reports whether they did.
func (s *Sink) Wait(n int, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		if s.Count() >= n {
			return true
		}
		select {
		case <-s.arrived:
		case <-deadline:
			return s.Count() >= n
		}
	}
}

func (s *Sink) add(m Message) {
	s.mu.Lock()
	s.count++
	if !s.opts.Discard {
		s.messages = append(s.messages, m)
	}
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
	if s.opts.OnMessage != nil {
		s.opts.OnMessage(m)
	}
}

type session struct {
	sink *Sink
	conn *smtp.Conn
	from string
	to   []string
	user string
	utf8 bool
	// requireTLS: MAIL FROM carried REQUIRETLS.
	requireTLS bool
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string {
	var mechs []string
	if s.sink.opts.Users != nil {
		mechs = append(mechs, sasl.Plain)
	}
	if s.sink.opts.OAuth != nil {
		mechs = append(mechs, mechXOAuth2, mechOAuthBearer)
	}
	return mechs
}

// loginRequired reports whether MAIL needs a login first.
func (s *session) loginRequired() bool { return s.sink.opts.Users != nil || s.sink.opts.OAuth != nil }

func (s *session) Auth(mech string) (sasl.Server, error) {
	switch {
	case (mech == mechXOAuth2 || mech == mechOAuthBearer) && s.sink.opts.OAuth != nil:
		return &oauthServer{opts: s.sink.opts.OAuth, mech: mech, onSuccess: func(u string) { s.user = u }, onRefusal: s.sink.refusedToken}, nil
	case mech != sasl.Plain || s.sink.opts.Users == nil:
		return nil, errNoMech
	}
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if want, ok := s.sink.opts.Users[user]; ok && want == pass {
			s.user = user
			return nil
		}
		return errors.New("invalid credentials")
	}), nil
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.loginRequired() && s.user == "" {
		return smtp.ErrAuthRequired
	}
	if f := s.sink.opts.RefuseMail; f != nil {
		if err := f(from); err != nil {
			return err
		}
	}
	s.from, s.utf8, s.requireTLS = from, opts != nil && opts.UTF8, opts != nil && opts.RequireTLS
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if f := s.sink.opts.Refuse; f != nil {
		if err := f(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	var buf bytes.Buffer
	if s.sink.opts.Discard {
		io.Copy(io.Discard, r)
	} else if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	if f := s.sink.opts.RefuseData; f != nil {
		if err := f(); err != nil {
			return err
		}
	}
	state, _ := s.conn.TLSConnectionState()
	s.sink.add(Message{From: s.from, To: s.to, Data: buf.Bytes(), TLS: state, User: s.user, UTF8: s.utf8, RequireTLS: s.requireTLS})
	return nil
}

func (s *session) Reset()        { s.from, s.to, s.utf8, s.requireTLS = "", nil, false, false }
func (s *session) Logout() error { return nil }

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}
