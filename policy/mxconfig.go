package policy

import "strings"

// compileMX checks the keys of a destination with upstream = "mx": the
// level, and the keys that have no meaning when the next hop is each
// recipient domain's own mail exchanger (port 25, STARTTLS, its names
// from DNS, no login).
func (d *Destination) compileMX(s Spec, fail func(error)) {
	switch MXSecurity(strings.ToLower(s.MXSecurity)) {
	case "", DANEOrSTS:
		d.MXSecurity = DANEOrSTS
	case DANEOnly, STSOnly, Verify:
		d.MXSecurity = MXSecurity(strings.ToLower(s.MXSecurity))
	default:
		fail(fieldErr("mx_security", "%q is not a level; write \"dane-or-sts\" (the default), \"dane\", \"sts\" or \"verify\"", s.MXSecurity))
		d.MXSecurity = DANEOrSTS
	}
	if strings.EqualFold(s.TLS, "implicit") {
		fail(fieldErr("tls", "mail exchangers are reached on port 25 with STARTTLS; remove tls (or write \"starttls\") with upstream = \"mx\""))
	}
	for key, set := range map[string]bool{
		"require_hostname": len(s.RequireHostname) > 0,
		"server_name":      s.ServerName != "",
		"provider":         s.Provider != "",
		"auth_username":    s.AuthUsername != "",
		"oauth":            s.OAuth != nil,
	} {
		if set {
			fail(fieldErr(key, "has no meaning with upstream = \"mx\": each mail exchanger's name comes from DNS and mail exchangers take no login; remove %s", key))
		}
	}
}
