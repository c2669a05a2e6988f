package relay

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"tlsrelay/relay/users"
)

var _ smtp.AuthSession = (*session)(nil)

// authAllowed: credentials travel only inside TLS or over loopback, where
// nobody else can read them.
func (s *session) authAllowed() bool {
	_, isTLS := s.conn.TLSConnectionState()
	return credentialsSafe(isTLS, s.ip)
}

func credentialsSafe(isTLS bool, ip netip.Addr) bool {
	return isTLS || ip.IsLoopback()
}

// AuthMechanisms is what EHLO offers: nothing without a users file, and
// nothing on a connection where a password could be read by others.
func (s *session) AuthMechanisms() []string {
	if s.relay.Config().Users == nil || !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

var errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
	Message: "Encryption required: use STARTTLS before AUTH"}

// Auth starts a SASL exchange.
func (s *session) Auth(mech string) (sasl.Server, error) {
	db := s.relay.Config().Users
	if db == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if !s.authAllowed() {
		return nil, errEncryptionRequired
	}
	check := func(identity, name, password string) error { return s.login(db, identity, name, password) }
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(check), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) login(db *users.DB, identity, name, password string) error {
	if identity != "" && identity != name {
		return smtp.ErrAuthFailed
	}
	if u, ok := db.Authenticate(name, password); ok {
		s.user = u
		s.log = s.log.With("user", u.Name)
		s.log.Info("client authenticated")
		return nil
	}
	// Never the password, and the delay grows with the failures seen from
	// this address, so guessing is slow.
	s.relay.countReject("auth_failed")
	delay := s.relay.authFailures.fail(s.ip)
	s.failures++
	s.log.Warn("authentication failed", "user", name, "session_failures", s.failures, "delay", delay.String())
	time.Sleep(delay)
	if s.failures >= s.relay.Config().Server.AuthMaxFailures {
		s.log.Warn("too many authentication failures; closing the connection", "user", name)
		// go-smtp writes the 535 right after we return; close a moment
		// later so the client still reads why.
		time.AfterFunc(time.Second, func() { s.conn.Close() })
	}
	return smtp.ErrAuthFailed
}

// failureTracker remembers recent AUTH failures per client address.
type failureTracker struct {
	mu   sync.Mutex
	seen map[netip.Addr]*failureRecord
}

type failureRecord struct {
	count int
	last  time.Time
}

// failureMemory is how long a client's failures count against it.
const failureMemory = 15 * time.Minute

// fail records a failure and returns how long to wait before answering:
// 1s, 2s, 4s... up to 10s.
func (t *failureTracker) fail(ip netip.Addr) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen == nil {
		t.seen = map[netip.Addr]*failureRecord{}
	}
	now := time.Now()
	for k, r := range t.seen { // forget old entries, keeping the map small
		if now.Sub(r.last) > failureMemory {
			delete(t.seen, k)
		}
	}
	r := t.seen[ip]
	if r == nil {
		r = &failureRecord{}
		t.seen[ip] = r
	}
	r.count++
	r.last = now
	d := time.Second << min(r.count-1, 4)
	return min(d, 10*time.Second)
}

// loginServer is the server side of the LOGIN mechanism, which go-sasl
// only provides as a client. Legacy applications often speak only LOGIN.
type loginServer struct {
	check func(identity, name, password string) error
	name  string
	step  int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(response) > 0 { // initial response carries the user name
			l.name = string(response)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.name = string(response)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check("", l.name, string(response))
	}
	return nil, true, errors.New("unexpected LOGIN response")
}
