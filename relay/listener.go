package relay

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"tlsrelay/relay/linecheck"
)

// filterListener is the relay's gatekeeper in front of go-smtp: it turns
// away clients outside allowed_networks and clients beyond the connection
// limits, each with a reply that says why, before they can say anything;
// and it puts the line discipline (linecheck) under every plain session —
// including one that said STARTTLS, until the server has really started
// TLS on it (linecheck.Conn watches both sides for that).
type filterListener struct {
	net.Listener
	relay *Relay
	// tlsConfig is set on the listener of implicit_tls_listen: its conns
	// are handed to go-smtp as *tls.Conn, which go-smtp must see as such,
	// so the raw-stream guard cannot sit under them (the data check still
	// applies to what comes out of TLS).
	tlsConfig *tls.Config
}

// connCounter counts open client connections, in all and per address.
type connCounter struct {
	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

func (l *filterListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		r := l.relay
		ip := remoteIP(c.RemoteAddr())
		if !r.allowed(ip) {
			r.log.Warn("connection refused: client not in allowed_networks", "client", c.RemoteAddr().String())
			r.countReject("network_not_allowed")
			go refuse(c, "554 5.7.1 Your address is not allowed to use this relay (allowed_networks)")
			continue
		}
		if reason := r.conns.acquire(ip, r.Config().Server.MaxConnections, r.Config().Server.MaxConnectionsPerIP); reason != "" {
			r.log.Warn("connection refused: "+reason, "client", c.RemoteAddr().String())
			r.countReject("connection_limit")
			go refuse(c, "421 4.7.0 Too many connections ("+reason+"); try again later")
			continue
		}
		counted := &countedConn{Conn: c, release: func() { r.conns.release(ip) }}
		if l.tlsConfig != nil {
			return tls.Server(counted, l.tlsConfig), nil
		}
		lc := linecheck.NewConn(counted, r.server.TLSConfig != nil)
		lc.MaxLineLength = r.server.MaxLineLength
		return lc, nil
	}
}

// refuse answers a connection once and closes it.
func refuse(c net.Conn, reply string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, reply+"\r\n")
	c.Close()
}

func (cc *connCounter) acquire(ip netip.Addr, max, maxPerIP int) string {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.perIP == nil {
		cc.perIP = map[netip.Addr]int{}
	}
	switch {
	case cc.total >= max:
		return "max_connections reached"
	case cc.perIP[ip] >= maxPerIP:
		return "max_connections_per_ip reached"
	}
	cc.total++
	cc.perIP[ip]++
	return ""
}

func (cc *connCounter) release(ip netip.Addr) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.total--
	if cc.perIP[ip]--; cc.perIP[ip] <= 0 {
		delete(cc.perIP, ip)
	}
}

// countedConn gives its slot back exactly once when closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func remoteIP(a net.Addr) netip.Addr {
	if tcp, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(tcp.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

func (r *Relay) allowed(ip netip.Addr) bool {
	for _, n := range r.Config().Networks {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
