package sink

import (
	"bufio"
	"io"
	"net"
	"strings"
	"sync"
)

// Raw is an upstream that says, byte for byte, what its script says: a
// greeting cut off in the middle, an endless reply, a reply that is not
// SMTP — what a broken server, or someone on the path before TLS, sends.
// It runs the script once per connection it accepts and holds every
// connection until Close.
type Raw struct {
	ln     net.Listener
	script func(*RawConn)
	mu     sync.Mutex
	held   []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// RawConn is one connection to a Raw upstream, as its script sees it.
type RawConn struct {
	net.Conn
	r *bufio.Reader
}

// Say writes s exactly as given (add "\r\n" where a line should end).
func (c *RawConn) Say(s string) error {
	_, err := io.WriteString(c.Conn, s)
	return err
}

// Line reads the client's next line, without its line ending.
func (c *RawConn) Line() (string, error) {
	l, err := c.r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

// StartRaw listens on 127.0.0.1 and runs script on every connection; the
// connection stays open after the script returns, until Close.
func StartRaw(script func(*RawConn)) (*Raw, error) {
	return startRaw("127.0.0.1:0", script)
}

// startRaw listens on addr and runs script (if any) on every connection.
func startRaw(addr string, script func(*RawConn)) (*Raw, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Raw{ln: ln, script: script}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				c.Close()
				return
			}
			s.held = append(s.held, c)
			if script == nil {
				s.mu.Unlock()
				continue
			}
			s.wg.Add(1)
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				script(&RawConn{Conn: c, r: bufio.NewReader(c)})
			}()
		}
	}()
	return s, nil
}

// Addr returns the host:port it listens on.
func (s *Raw) Addr() string { return s.ln.Addr().String() }

// Accepted returns how many connections it has taken so far.
func (s *Raw) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// Close stops listening, closes every connection and waits for the
// scripts to return.
func (s *Raw) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for _, c := range s.held {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
