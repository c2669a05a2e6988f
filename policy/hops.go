package policy

import (
	"crypto/tls"
	"fmt"
	"strings"
)

// Upstreams is the `upstream` key of a destination: one next hop
// ("host:port") or an array of them, tried in order. A single hop is
// written back as a string, so a configuration with one upstream reads
// as it always did.
type Upstreams []string

// UnmarshalTOML takes a string or an array of strings.
func (u *Upstreams) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*u = Upstreams{v}
		return nil
	case []any:
		out := make(Upstreams, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("%v is not a string; write upstream = \"host:port\" or an array of them, e.g. [\"smtp1.example.com:587\", \"smtp2.example.com:587\"]", e)
			}
			out = append(out, s)
		}
		*u = out
		return nil
	}
	return fmt.Errorf("%v is not host:port; write upstream = \"host:port\" or an array of them, e.g. [\"smtp1.example.com:587\", \"smtp2.example.com:587\"]", v)
}

// MarshalTOML writes one hop as a string, several as an array.
func (u Upstreams) MarshalTOML() ([]byte, error) {
	quote := func(s string) string {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
	}
	if len(u) == 1 {
		return []byte(quote(u[0])), nil
	}
	parts := make([]string, len(u))
	for i, s := range u {
		parts[i] = quote(s)
	}
	return []byte("[" + strings.Join(parts, ", ") + "]"), nil
}

// hop returns the view of d for its next hop addr (host is its host
// part): the same policy, with that hop's address, and its own host as
// the required name and SNI unless the configuration names them. Each hop
// has its own TLS session cache, since a session belongs to one server.
func (d *Destination) hop(addr, host string) *Destination {
	h := *d
	h.Upstream, h.Host = addr, host
	if len(d.spec.RequireHostname) == 0 {
		h.RequireHostname = []string{host}
	}
	if d.spec.ServerName == "" {
		h.ServerName = host
	}
	h.hops, h.parent = nil, d
	h.sessions = tls.NewLRUClientSessionCache(64)
	return &h
}

// HopAddrs returns the host:port of every hop, in order.
func (d *Destination) HopAddrs() []string {
	var out []string
	for _, h := range d.Hops() {
		out = append(out, h.Upstream)
	}
	return out
}
