package sendmail

import (
	"errors"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/drop"
)

// ServeSMTP serves one SMTP session on in and out (sendmail -bs): the
// program talks SMTP to sendmail, and sendmail gives each MAIL, RCPT and
// data to the relay and passes the relay's reply back unchanged, so the
// front door's rules and answers apply as they are. Lines are bounded as
// on the front door (go-smtp's server, maxBytes for the data). When the
// relay cannot be reached, or is lost during the session, the
// transaction is accepted into the drop directory instead (its reply
// says so), so a program that does not retry loses nothing.
func (r *Relay) ServeSMTP(in io.Reader, out io.Writer, hostname string, maxBytes int64) error {
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &bsSession{relay: r}, nil
	}))
	s.Domain = hostname
	s.MaxMessageBytes = maxBytes
	s.MaxLineLength = 2000
	s.ErrorLog = log.New(io.Discard, "", 0)
	conn := &stdioConn{r: in, w: out, closed: make(chan struct{})}
	ln := &oneConnListener{conn: conn}
	go s.Serve(ln)
	<-conn.closed
	ln.Close()
	return nil
}

// bsSession is one -bs session: it forwards to a client session with the
// relay, opened at the first MAIL, and keeps the envelope so it can fall
// back to the drop directory.
type bsSession struct {
	relay  *Relay
	client *smtp.Client
	// dropping is set once the relay was found unreachable or lost.
	dropping bool
	why      error
	env      drop.Envelope
}

func (s *bsSession) connect() {
	if s.client != nil || s.dropping {
		return
	}
	conn, err := net.DialTimeout("tcp", s.relay.Addr, 10*time.Second)
	if err == nil {
		c := smtp.NewClient(conn)
		c.CommandTimeout = 2 * time.Minute
		c.SubmissionTimeout = 10 * time.Minute
		if err = c.Hello(s.relay.Helo); err == nil {
			s.client = c
			return
		}
		c.Close()
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 {
			// The relay refuses this client for good: say so at MAIL.
			s.why = se
			return
		}
	}
	s.fallBack(err)
}

// fallBack switches the session to the drop directory.
func (s *bsSession) fallBack(err error) {
	if s.client != nil {
		s.client.Close()
		s.client = nil
	}
	s.dropping, s.why = true, err
}

// lost reports whether err is the relay going away: no reply, or 421
// (the relay is closing the session, e.g. while it stops).
func lost(err error) bool {
	var se *smtp.SMTPError
	return err != nil && (!errors.As(err, &se) || se.Code == 421)
}

func (s *bsSession) Mail(from string, opts *smtp.MailOptions) error {
	s.env = drop.Envelope{From: from, EightBit: opts != nil && opts.Body == smtp.Body8BitMIME}
	s.connect()
	if s.client == nil && !s.dropping {
		return s.why
	}
	if s.client != nil {
		err := s.client.Mail(from, opts)
		if !lost(err) {
			return err
		}
		s.fallBack(err)
	}
	return nil
}

func (s *bsSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.client != nil {
		err := s.client.Rcpt(to, opts)
		if err == nil {
			s.env.Recipients = append(s.env.Recipients, to)
		}
		if !lost(err) {
			return err
		}
		s.fallBack(err)
		// The recipients so far go to the drop with this one.
	}
	s.env.Recipients = append(s.env.Recipients, to)
	return nil
}

func (s *bsSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err // too large: go-smtp's own 552
	}
	if s.client != nil {
		resp, err := s.send(data)
		if err == nil {
			// resp is the relay's text, its enhanced code included.
			return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.NoEnhancedCode, Message: resp}
		}
		// A refusal for good is the relay's answer; a 4xx to the data
		// means the relay did not take it now: the drop directory does.
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code >= 500 {
			return err
		}
		s.fallBack(err)
	}
	if s.relay.DropDir == "" {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: "The relay cannot be reached and the drop directory is off; try again later"}
	}
	if _, err := drop.Write(s.relay.DropDir, s.env, data); err != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: "The relay cannot be reached and the message cannot be kept in the drop directory: " + err.Error()}
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
		Message: "OK kept in the drop directory; the relay will take it as soon as it can"}
}

func (s *bsSession) send(data []byte) (string, error) {
	w, err := s.client.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write(data); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}

func (s *bsSession) Reset() {
	if s.client != nil {
		if err := s.client.Reset(); lost(err) {
			s.fallBack(err)
		}
	}
	s.env = drop.Envelope{}
}

func (s *bsSession) Logout() error {
	if s.client != nil {
		s.client.Quit()
		s.client.Close()
	}
	return nil
}

// stdioConn is a net.Conn made of standard input and output.
type stdioConn struct {
	r      io.Reader
	w      io.Writer
	once   sync.Once
	closed chan struct{}
}

func (c *stdioConn) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *stdioConn) Write(b []byte) (int, error) { return c.w.Write(b) }
func (c *stdioConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}
func (c *stdioConn) LocalAddr() net.Addr                { return stdioAddr{} }
func (c *stdioConn) RemoteAddr() net.Addr               { return stdioAddr{} }
func (c *stdioConn) SetDeadline(t time.Time) error      { return nil }
func (c *stdioConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *stdioConn) SetWriteDeadline(t time.Time) error { return nil }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdin" }

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	mu     sync.Mutex
	done   chan struct{}
	handed bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.done == nil {
		l.done = make(chan struct{})
	}
	if !l.handed {
		l.handed = true
		l.mu.Unlock()
		return l.conn, nil
	}
	done := l.done
	l.mu.Unlock()
	<-done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.mu.Lock()
	if l.done == nil {
		l.done = make(chan struct{})
	}
	l.once.Do(func() { close(l.done) })
	l.mu.Unlock()
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return stdioAddr{} }
