package config

import (
	"crypto/tls"
	"net"
	"net/netip"
	"slices"

	"tlsrelay/relay/users"
)

// checkInbound checks the front door's TLS, AUTH and limits, and refuses a
// configuration that would make an open relay.
func (c *Config) checkInbound(bad func(table, key, format string, args ...any) *Error, p *problems) {
	s := &c.Server
	if (s.TLSCertFile == "") != (s.TLSKeyFile == "") {
		p.add(bad("server", "tls_cert_file", "tls_cert_file and tls_key_file go together; set both or neither"))
	} else if s.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
		if err != nil {
			p.add(bad("server", "tls_cert_file", "cannot load the certificate and key: %v", err))
		} else {
			c.TLSCert = &cert
		}
	}
	if s.ImplicitTLSListen != "" {
		if c.TLSCert == nil && p.ok("server.tls_cert_file", "server.tls_key_file") {
			p.add(bad("server", "implicit_tls_listen", "needs tls_cert_file and tls_key_file; set both, or remove implicit_tls_listen"))
		}
		if _, _, err := net.SplitHostPort(s.ImplicitTLSListen); err != nil {
			p.add(bad("server", "implicit_tls_listen", "%q is not host:port; write e.g. \"127.0.0.1:4650\"", s.ImplicitTLSListen))
		}
	}
	if s.AuthUsersFile != "" {
		db, err := users.Load(s.AuthUsersFile)
		if err != nil {
			p.add(bad("server", "auth_users_file", "%v", err))
		} else {
			c.Users = db
		}
	}
	if s.AuthRequired && c.Users == nil && p.ok("server.auth_users_file") {
		p.add(bad("server", "auth_required", "auth_required = true needs auth_users_file; set auth_users_file (see tlsrelay passwd), or remove auth_required"))
	}
	if s.AuthMaxFailures <= 0 {
		p.add(bad("server", "auth_max_failures", "must be positive; write e.g. auth_max_failures = 3"))
	}
	if s.MaxConnections <= 0 {
		p.add(bad("server", "max_connections", "must be positive; write e.g. max_connections = 1000"))
	}
	if (s.MaxConnectionsPerIP <= 0 || s.MaxConnectionsPerIP > s.MaxConnections) && p.ok("server.max_connections") {
		p.add(bad("server", "max_connections_per_ip", "must be positive and at most max_connections; write e.g. max_connections_per_ip = %d", min(100, max(s.MaxConnections, 1))))
	}

	// The open-relay guard: a port reachable from other machines must
	// either require a login or name, on purpose, who may use it. It
	// needs the values it weighs to be right first.
	if !p.ok("server.listen", "server.implicit_tls_listen", "server.allowed_networks") {
		return
	}
	defaultNets := Default().Server.AllowedNetworks
	deliberateNets := c.explicitNetworks && !slices.Equal(s.AllowedNetworks, defaultNets)
	for _, addr := range []string{s.Listen, s.ImplicitTLSListen} {
		if addr == "" || isLoopbackListen(addr) || s.AuthRequired || deliberateNets {
			continue
		}
		p.add(bad("server", "listen",
			"%s is reachable from other machines, and neither auth_required = true nor an explicit allowed_networks is set: anyone who can reach it could send mail as you. Either listen on 127.0.0.1, set auth_required = true (with auth_users_file), or set allowed_networks to exactly the networks that may send", addr))
		return
	}
}

func isLoopbackListen(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
