// Package dnstest is a DNS server for tests: it answers on 127.0.0.1
// (UDP and TCP, one port) from records a test adds in zone-file syntax,
// with the AD bit set or not per zone, so DNSSEC-validated and unvalidated
// answers can both be had without a real resolver. It is the DNS
// counterpart of relay/sink.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Server is a running test DNS server.
type Server struct {
	udp, tcp *dns.Server
	addr     string

	mu      sync.Mutex
	zones   map[string]bool // zone name (fqdn) → answers are validated
	records map[string][]dns.RR
	fails   map[string]int // name+type → rcode to answer
	queries atomic.Int64
}

// Start starts a server on a free port of 127.0.0.1.
func Start() (*Server, error) {
	s := &Server{zones: map[string]bool{}, records: map[string][]dns.RR{}, fails: map[string]int{}}
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			return nil, err
		}
	}
	s.addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	var ready sync.WaitGroup
	ready.Add(2)
	s.udp.NotifyStartedFunc, s.tcp.NotifyStartedFunc = ready.Done, ready.Done
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	ready.Wait()
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Close stops the server.
func (s *Server) Close() error {
	s.udp.Shutdown()
	return s.tcp.Shutdown()
}

// Zone declares a zone and whether its answers are DNSSEC-validated (AD
// set). A name belongs to the longest zone that contains it; a name in no
// zone is answered without AD. An answer that follows a CNAME across zones
// has AD only if every zone on the way is secure.
func (s *Server) Zone(name string, secure bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zones[dns.Fqdn(strings.ToLower(name))] = secure
}

// Add adds records written as in a zone file, one per string, e.g.
// "example.test. MX 10 mx.example.test." (TTL and class may be left out).
func (s *Server) Add(records ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			return fmt.Errorf("dnstest: %q: %v", r, err)
		}
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
	return nil
}

// MustAdd is Add for records a test knows to be right; it panics on a
// mistake.
func (s *Server) MustAdd(records ...string) {
	if err := s.Add(records...); err != nil {
		panic(err)
	}
}

// Remove deletes every record of name of type qtype (dns.TypeMX, …).
func (s *Server) Remove(name string, qtype uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = dns.Fqdn(strings.ToLower(name))
	var keep []dns.RR
	for _, rr := range s.records[name] {
		if rr.Header().Rrtype != qtype {
			keep = append(keep, rr)
		}
	}
	s.records[name] = keep
}

// Fail makes the server answer questions for name of type qtype with
// rcode (e.g. dns.RcodeServerFailure) instead of its records; rcode 0
// lifts it.
func (s *Server) Fail(name string, qtype uint16, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(dns.Fqdn(strings.ToLower(name)), qtype)
	if rcode == 0 {
		delete(s.fails, k)
		return
	}
	s.fails[k] = rcode
}

// Queries counts the questions answered so far.
func (s *Server) Queries() int { return int(s.queries.Load()) }

func key(name string, qtype uint16) string { return fmt.Sprintf("%s/%d", name, qtype) }

// secureLocked reports whether name's zone is secure.
func (s *Server) secureLocked(name string) bool {
	best, secure := -1, false
	for z, sec := range s.zones {
		if (name == z || strings.HasSuffix(name, "."+z) || z == ".") && len(z) > best {
			best, secure = len(z), sec
		}
	}
	return secure
}

// ServeDNS answers one question: the records of that name and type,
// following CNAMEs within the server's data; NXDOMAIN for a name with no
// records at all; NOERROR with no answer (NODATA) otherwise.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	secure := true
	for hop := 0; hop < 10; hop++ {
		secure = secure && s.secureLocked(name)
		if rc, ok := s.fails[key(name, q.Qtype)]; ok {
			m.Rcode = rc
			m.Answer = nil
			secure = false
			break
		}
		rrs, exists := s.records[name]
		if !exists || len(rrs) == 0 {
			if hop == 0 {
				m.Rcode = dns.RcodeNameError
			}
			break
		}
		var cname *dns.CNAME
		found := false
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
				found = true
			} else if cn, ok := rr.(*dns.CNAME); ok {
				cname = cn
			}
		}
		if found || cname == nil {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = strings.ToLower(cname.Target)
	}
	s.mu.Unlock()
	m.AuthenticatedData = secure && req.AuthenticatedData || secure && req.IsEdns0() != nil && req.IsEdns0().Do()
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	w.WriteMsg(m)
}
