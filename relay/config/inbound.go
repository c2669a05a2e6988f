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
func (c *Config) checkInbound(bad func(table, key, format string, args ...any) error) error {
	s := &c.Server
	if (s.TLSCertFile == "") != (s.TLSKeyFile == "") {
		return bad("server", "tls_cert_file", "tls_cert_file and tls_key_file go together; set both or neither")
	}
	if s.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
		if err != nil {
			return bad("server", "tls_cert_file", "cannot load the certificate and key: %v", err)
		}
		c.TLSCert = &cert
	}
	if s.ImplicitTLSListen != "" {
		if c.TLSCert == nil {
			return bad("server", "implicit_tls_listen", "needs tls_cert_file and tls_key_file")
		}
		if _, _, err := net.SplitHostPort(s.ImplicitTLSListen); err != nil {
			return bad("server", "implicit_tls_listen", "%q is not host:port; write e.g. \"127.0.0.1:4650\"", s.ImplicitTLSListen)
		}
	}
	if s.AuthUsersFile != "" {
		db, err := users.Load(s.AuthUsersFile)
		if err != nil {
			return bad("server", "auth_users_file", "%v", err)
		}
		c.Users = db
	}
	if s.AuthRequired && c.Users == nil {
		return bad("server", "auth_required", "auth_required = true needs auth_users_file")
	}
	if s.AuthMaxFailures <= 0 {
		return bad("server", "auth_max_failures", "must be positive")
	}
	if s.MaxConnections <= 0 {
		return bad("server", "max_connections", "must be positive")
	}
	if s.MaxConnectionsPerIP <= 0 || s.MaxConnectionsPerIP > s.MaxConnections {
		return bad("server", "max_connections_per_ip", "must be positive and at most max_connections")
	}

	// The open-relay guard: a port reachable from other machines must
	// either require a login or name, on purpose, who may use it.
	defaultNets := Default().Server.AllowedNetworks
	deliberateNets := c.explicitNetworks && !slices.Equal(s.AllowedNetworks, defaultNets)
	for _, addr := range []string{s.Listen, s.ImplicitTLSListen} {
		if addr == "" || isLoopbackListen(addr) || s.AuthRequired || deliberateNets {
			continue
		}
		return bad("server", "listen",
			"%s is reachable from other machines, and neither auth_required = true nor an explicit allowed_networks is set: anyone who can reach it could send mail as you. Either listen on 127.0.0.1, set auth_required = true (with auth_users_file), or set allowed_networks to exactly the networks that may send", addr)
	}
	return nil
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
