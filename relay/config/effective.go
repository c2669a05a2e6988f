package config

import (
	"crypto/tls"
	"strings"
)

// Effective returns the configuration as it is in force: every key with
// its value, defaults filled in, in the file's own shape. It holds no
// secrets (passwords are only named by their source), so it can be shown.
func (c *Config) Effective() *Config {
	out := *c
	out.Destination = nil
	for _, d := range c.Table.Destinations() {
		spec := d.Spec()
		spec.Upstreams = d.HopAddrs()
		spec.TLS = string(d.Mode)
		spec.MinTLS = strings.TrimPrefix(tls.VersionName(d.MinTLS), "TLS ")
		spec.OnFailure = string(d.OnFailure)
		spec.RequireHostname = d.RequireHostname
		spec.ServerName = d.ServerName
		spec.Upstream = d.Upstream
		spec.AuthMechanism = string(d.AuthMechanism)
		spec.MXSecurity = string(d.MXSecurity)
		if o := d.OAuth; o != nil {
			eff := *spec.OAuth // secrets stay named by their source
			eff.Flow, eff.TokenURL, eff.DeviceAuthURL, eff.AuthURL, eff.Scopes = string(o.Flow), o.TokenURL, o.DeviceAuthURL, o.AuthURL, o.Scopes
			spec.OAuth = &eff
		}
		out.Destination = append(out.Destination, spec)
	}
	return &out
}
