package sink

import (
	"net"
	"sync"
)

// Silent is an upstream that accepts TCP connections and never says a
// word: a server that hangs, or an address whose connects time out. It
// holds every connection until Close and counts them.
type Silent struct {
	ln   net.Listener
	mu   sync.Mutex
	held []net.Conn
}

// StartSilent listens on addr (default 127.0.0.1:0).
func StartSilent(addr string) (*Silent, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Silent{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.held = append(s.held, c)
			s.mu.Unlock()
		}
	}()
	return s, nil
}

// Addr returns the host:port it listens on.
func (s *Silent) Addr() string { return s.ln.Addr().String() }

// Accepted returns how many connections it has taken so far.
func (s *Silent) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// Close stops listening and closes every connection it holds.
func (s *Silent) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.held {
		c.Close()
	}
	return err
}
