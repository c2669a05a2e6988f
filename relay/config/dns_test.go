package config

import (
	"strings"
	"testing"

	"tlsrelay/policy"
)

func TestMXDestinationAndDNS(t *testing.T) {
	base := "[queue]\ndir = \"/tmp/x\"\n"
	mx := func(extra string) string {
		return "\n[[destination]]\ndomains = [\"*\"]\nupstream = \"mx\"\n" + extra + "\n"
	}
	c, err := Parse("t.toml", base+mx(""))
	if err != nil {
		t.Fatal(err)
	}
	d := c.Table.Lookup("anything.test")
	if d == nil || !d.IsMX() || d.MXSecurity != policy.DANEOrSTS || c.DNS.Resolver != "127.0.0.1:53" || c.DNS.AllowInternalAddresses {
		t.Fatalf("default MX destination: %+v, dns %+v", d, c.DNS)
	}
	for _, ok := range []string{
		base + mx(`mx_security = "dane"`),
		base + mx(`mx_security = "verify"`) + "[dns]\nresolver = \"192.0.2.53:53\"\n",
		base + mx(`mx_security = "sts"`) + "[dns]\nresolver = \"192.0.2.53:53\"\n",
		base + mx("") + "[dns]\nresolver = \"192.0.2.53:53\"\ntrust_ad = true\n",
		base + mx("") + "[dns]\nresolver = \"[::1]:5353\"\n",
		base + mx("") + "[dns]\nallow_internal_addresses = true\n",
	} {
		if _, err := Parse("t.toml", ok); err != nil {
			t.Errorf("refused:\n%s\n%v", ok, err)
		}
	}
	for _, c := range []struct{ src, want string }{
		{base + mx(`mx_security = "strict"`), `mx_security: "strict" is not a level`},
		{base + "\n[[destination]]\ndomains = [\"*\"]\nupstream = \"smtp.example.com:587\"\nmx_security = \"dane\"\n", `applies only to upstream = "mx"`},
		{base + mx(`tls = "implicit"`), "port 25 with STARTTLS"},
		{base + mx(`auth_username = "u"`+"\nauth_password_env = \"HOME\""), "auth_username: has no meaning"},
		{base + mx(`require_hostname = ["mx.example.test"]`), "require_hostname: has no meaning"},
		{base + mx("") + "[dns]\nresolver = \"192.0.2.53:53\"\n", "RFC 6698 A.3"},
		{base + mx(`mx_security = "dane"`) + "[dns]\nresolver = \"192.0.2.53:53\"\n", "trust_ad = true"},
		{base + mx("") + "[dns]\nresolver = \"dns.example.test:53\"\n", "is not IP:port"},
		{base + mx("") + "[dns]\nallow_internal_addresses = \"yes\"\n", "allow_internal_addresses"},
		{base + mx("") + "[dns]\nallow_internal_address = true\n", "allow_internal_address"},
	} {
		_, err := Parse("t.toml", c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\n→ %v, want %q", c.src, err, c.want)
		}
	}
}
