package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/address"
	"tlsrelay/relay/config"
	"tlsrelay/relay/dsn"
	"tlsrelay/relay/linecheck"
	"tlsrelay/relay/spool"
	"tlsrelay/relay/upstream"
	"tlsrelay/relay/users"
)

func (r *Relay) newServer(cfg *config.Config) *smtp.Server {
	s := smtp.NewServer(smtp.BackendFunc(r.newSession))
	s.Domain = cfg.Server.Hostname
	s.MaxMessageBytes = cfg.Server.MaxMessageBytes
	s.MaxRecipients = cfg.Server.MaxRecipients
	s.ReadTimeout = cfg.Server.ReadTimeout.Duration
	s.WriteTimeout = cfg.Server.WriteTimeout.Duration
	s.ErrorLog = log.New(slogWriter{r.log}, "", 0)
	// SMTPUTF8 is offered: such a transaction may carry non-ASCII local
	// parts, and goes upstream with SMTPUTF8 (upstream.Conn.Send refuses
	// a non-ASCII address for an upstream that does not offer it).
	s.EnableSMTPUTF8 = true
	// REQUIRETLS (RFC 8689) is advertised by go-smtp only inside TLS;
	// Mail refuses the parameter on a plaintext session.
	s.EnableREQUIRETLS = true
	if cfg.TLSCert != nil {
		s.TLSConfig = &tls.Config{GetCertificate: r.inboundCertificate, MinVersion: tls.VersionTLS12}
	}
	// AUTH is offered by the session itself, only on TLS or loopback
	// connections (see session.AuthMechanisms); go-smtp's own TLS-only rule
	// would forbid it on loopback.
	s.AllowInsecureAuth = true
	return s
}

// slogWriter sends go-smtp's own error log lines to slog.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.log.Warn("smtp server", "error", strings.TrimSpace(string(b)))
	return len(b), nil
}

// session is one inbound SMTP session.
type session struct {
	relay  *Relay
	conn   *smtp.Conn
	log    *slog.Logger
	client string
	ip     netip.Addr
	helo   string
	// user is the authenticated account, if any; failures counts failed
	// AUTH attempts in this session.
	user     *users.User
	failures int

	from    string
	sender  address.Address // from, parsed: the zero Address for <>
	hasFrom bool
	utf8    bool
	// requireTLS: MAIL FROM carried REQUIRETLS (only accepted inside TLS).
	requireTLS bool
	rcpts      []string
	// reject is the destination of this transaction when it is in reject
	// mode: such a transaction holds recipients of that destination only,
	// so the one reply to DATA is true for every recipient.
	reject *policy.Destination
	// envBytes tallies the encoded size of this transaction's envelope
	// (see envelopeRoom).
	envBytes int
	// headerFrom is the mailbox this transaction's From header is
	// rewritten to ("" for none), decided by its first recipient's
	// destination, rewriteDest; dests are the destinations of its
	// recipients (see rewrite.go).
	headerFrom  string
	rewriteDest *policy.Destination
	dests       []*policy.Destination
}

func (r *Relay) newSession(c *smtp.Conn) (smtp.Session, error) {
	client := c.Conn().RemoteAddr().String()
	return &session{
		relay:  r,
		conn:   c,
		log:    r.log.With("client", client),
		client: client,
		ip:     remoteIP(c.Conn().RemoteAddr()),
		helo:   c.Hostname(),
	}, nil
}

func (s *session) Reset() {
	s.from, s.sender, s.hasFrom, s.utf8, s.requireTLS, s.rcpts, s.reject = "", address.Address{}, false, false, false, nil, nil
	s.headerFrom, s.rewriteDest, s.dests = "", nil, nil
}

func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.relay.Config().Server.AuthRequired && s.user == nil {
		s.relay.countReject("auth_required")
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
			Message: "Authentication required (this relay has auth_required = true)"}
	}
	utf8 := opts != nil && opts.UTF8
	requireTLS := opts != nil && opts.RequireTLS
	if requireTLS {
		if _, isTLS := s.conn.TLSConnectionState(); !isTLS {
			s.relay.countReject("requiretls_without_tls")
			return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 10},
				Message: "REQUIRETLS needs this session to use TLS: say STARTTLS first (RFC 8689)"}
		}
	}
	var addr address.Address // the null sender <> when from is ""
	if from != "" {
		var err error
		if addr, err = address.ParseDecoded(from, utf8); err != nil {
			s.relay.countReject("invalid_address")
			return addressReply(err, "Sender", 7)
		}
	}
	if s.user != nil && !s.user.MayUse(addr) {
		s.log.Warn("sender refused for user", "from", addr.String())
		s.relay.countReject("sender_not_allowed")
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: "User " + s.user.Name + " may not send as <" + addr.String() + ">"}
	}
	s.Reset()
	s.from, s.sender, s.hasFrom = addr.String(), addr, true
	s.utf8 = utf8
	s.requireTLS = requireTLS
	return nil
}

// addressReply turns an address the parser refused into the reply for
// it: 501 5.5.2 for a control character and 553 5.6.7 for non-ASCII (as
// before addresses were parsed), 553 5.1.x for routing forms (the
// mailbox name is not allowed) and 501 5.1.x for the rest (bad syntax).
// subject is 3 for a recipient, 7 for a sender (RFC 3463).
func addressReply(err error, role string, subject int) *smtp.SMTPError {
	var ae *address.Error
	if !errors.As(err, &ae) {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, subject}, Message: role + " address refused"}
	}
	code, enh := 501, smtp.EnhancedCode{5, 1, subject}
	switch ae.Reason {
	case address.ControlChar:
		enh = smtp.EnhancedCode{5, 5, 2}
	case address.NonASCII:
		code, enh = 553, smtp.EnhancedCode{5, 6, 7}
	case address.Routing:
		code = 553
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: role + " address refused: " + ae.Detail}
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	addr, err := address.ParseDecoded(to, s.utf8)
	if err != nil {
		s.relay.countReject("invalid_address")
		return addressReply(err, "Recipient", 3)
	}
	dest := s.relay.route(s.sender, addr.Domain)
	if dest == nil {
		s.log.Info("recipient refused: no destination for domain", "domain", addr.Domain, "from", s.from)
		s.relay.countReject("no_destination")
		msg := "Relaying to " + addr.Domain + " denied: no [[destination]] in this relay's policy claims that domain"
		if s.relay.Config().Table.Claims(addr.Domain) {
			msg = "Relaying to " + addr.Domain + " from <" + s.from + "> denied: the [[destination]]s that claim that domain are for other senders"
		}
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: msg}
	}
	if s.reject != nil && !s.relay.inForce(s.reject) {
		return policyChanged(s.reject)
	}
	if len(s.rcpts) > 0 && (s.reject != nil || dest.OnFailure == policy.Reject) && dest != s.reject {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: "Send recipients of " + dest.Name() + " in a separate transaction: a destination in reject mode must have its own transaction so the reply is true for all its recipients"}
	}
	if dest.OnFailure == policy.Reject && dest.Limits.MaxRecipientsPerMessage > 0 && len(s.rcpts) >= dest.Limits.MaxRecipientsPerMessage {
		// A reject-mode transaction goes upstream as one transaction, so
		// that the one reply is true for every recipient.
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: "Too many recipients for " + dest.Name() + " in one transaction (max_recipients_per_message); send the remaining recipients in another transaction"}
	}
	if len(s.rcpts) > 0 && s.reject != nil && s.reject.IsMX() && domainOf(s.rcpts[0]) != addr.Domain {
		// Each domain has its own mail exchangers: one reply to DATA can
		// be true for all recipients only if they share one.
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
			Message: "Send recipients of " + addr.Domain + " in a separate transaction: delivery to mail exchangers in reject mode takes one recipient domain per transaction"}
	}
	if err := s.rewriteCheck(dest); err != nil {
		return err
	}
	if err := s.envelopeRoom(to); err != nil {
		return err
	}
	s.rewriteRecord(dest)
	if dest.OnFailure == policy.Reject {
		s.reject = dest
	}
	s.rcpts = append(s.rcpts, addr.String())
	return nil
}

func (s *session) Data(r io.Reader) error {
	if err := s.rewriteStale(); err != nil {
		return err
	}
	env := spool.Envelope{
		From:       s.from,
		Recipients: append([]string(nil), s.rcpts...),
		Received:   time.Now().UTC(),
		Client:     s.client,
		Helo:       s.helo,
		UTF8:       s.utf8,
		RequireTLS: s.requireTLS,
	}
	p, err := s.relay.store.Create(env)
	if err != nil {
		s.log.Error("cannot create spool file", "error", err)
		return errSpool
	}
	if s.reject != nil {
		p.ForDirectDelivery()
	}
	w, rewritten := s.bodyWriter(p, p.ID())
	if d := s.dataReader(); d != nil {
		// A plaintext DATA: read by the line guard itself, whole buffers
		// at a time, straight into the spool.
		_, err = d.WriteTo(w)
	} else {
		// BDAT, or inside TLS: go-smtp's reader, and the data check.
		buf := copyBuffers.Get().(*[]byte)
		_, err = io.CopyBuffer(w, &linecheck.Reader{R: r}, *buf)
		copyBuffers.Put(buf)
	}
	var refused *smtp.SMTPError
	if err == nil {
		refused, err = rewritten()
	}
	if refused != nil {
		p.Abort()
		return refused
	}
	if err != nil {
		p.Abort()
		if errors.Is(err, linecheck.ErrBareLineEnding) {
			s.log.Warn("message refused: bare CR or LF in data (possible SMTP smuggling)", "id", p.ID())
			s.relay.countReject("bare_line_ending")
			return errBareLineEnding
		}
		if errors.Is(err, smtp.ErrTooLongLine) {
			s.log.Warn("message refused: a line is too long; closing the session", "id", p.ID())
			s.relay.countReject("line_too_long")
			return errLineTooLong
		}
		if errors.Is(err, linecheck.ErrTooLarge) {
			err = smtp.ErrDataTooLarge
		}
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			s.log.Info("message refused", "id", p.ID(), "reason", se.Message)
			s.relay.countReject("too_large")
			return se // too large: go-smtp's own 552
		}
		if isReadError(err) {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Message not received completely"}
		}
		s.log.Error("cannot write spool file", "id", p.ID(), "error", err)
		return errSpool
	}
	if err := s.sign(p); err != nil {
		p.Abort()
		s.log.Error("DKIM signing failed", "id", p.ID(), "error", err)
		return errSpool
	}
	if s.reject != nil {
		return s.deliverNow(p, s.reject)
	}
	if err := p.Commit(); err != nil {
		s.log.Error("cannot commit message to spool", "id", p.ID(), "error", err)
		return errSpool
	}
	s.log.Info("message accepted", "id", p.ID(), "from", env.From, "rcpts", len(env.Recipients), "bytes", p.Size())
	s.relay.metrics.Accepted.Inc()
	s.relay.queue.add(p.Envelope())
	// go-smtp answers DATA with the code and text of a returned SMTPError;
	// a 250 one is how the reply carries the queue id.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as " + p.ID()}
}

// sign adds a DKIM signature when a [[dkim]] entry covers the From:
// domain, over the bytes as they will be sent, before the message is
// committed or delivered.
func (s *session) sign(p *spool.Pending) error {
	signer := s.relay.Config().Signer
	if signer == nil {
		return nil
	}
	body, err := p.Body()
	if err != nil {
		return err
	}
	headers := dsn.ReadHeaders(body)
	body, err = p.Body()
	if err != nil {
		return err
	}
	sig, domain, err := signer.Sign(headers, body)
	if err != nil || sig == "" {
		return err
	}
	p.SetPrepend(sig)
	s.log.Debug("DKIM signed", "id", p.ID(), "d", domain)
	return nil
}

// deliverNow delivers a reject-mode transaction before answering DATA.
// The body was written to the spool's tmp/ only to bound memory; it is
// never committed, because the client's retry is the queue here.
func (s *session) deliverNow(p *spool.Pending, dest *policy.Destination) error {
	defer p.Abort()
	if _, err := p.Body(); err != nil {
		s.log.Error("cannot read back spool file", "id", p.ID(), "error", err)
		return errSpool
	}
	env := p.Envelope()
	body := upstream.Body{Size: p.WireSize(), UTF8: env.UTF8, RequireTLS: env.RequireTLS, Open: func() io.Reader {
		r, err := p.Body()
		if err != nil {
			return errReader{err}
		}
		return r
	}}
	cfg := s.relay.Config()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Queue.DeliveryTimeout.Duration)
	defer cancel()
	out := s.relay.attempt(ctx, env, dest, env.Recipients, body, true)
	switch {
	case out.failure == nil && len(out.refused) == 0 && out.delivered:
		s.relay.metrics.Accepted.Inc()
	case out.superseded:
		s.relay.countReject("policy_changed")
	default:
		s.relay.countReject("delivery_failed")
	}
	return out.reply()
}

var errBareLineEnding = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
	Message: "Message refused: it contains a bare CR or LF (only CRLF may end a line); nothing of it was accepted"}

var errLineTooLong = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 4, 0},
	Message: "Message refused: a line is longer than 2000 bytes with its CRLF; nothing of it was accepted"}

var errSpool = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
	Message: "Local error: the spool cannot store the message now; try again later"}

func isReadError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, smtp.ErrDataReset)
}

// dataReader returns the line guard's reader of a plaintext DATA in
// progress, or nil (BDAT, or a session inside TLS).
func (s *session) dataReader() *linecheck.DataReader {
	lc, ok := s.conn.Conn().(*linecheck.Conn)
	if !ok {
		return nil
	}
	return lc.DataReader(s.conn.Server().MaxMessageBytes)
}

// errReader fails every read with err.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// copyBuffers spare every message io.Copy's fresh 32 KiB buffer.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}
