package dnsx

import (
	"context"
	"testing"

	"github.com/miekg/dns"

	"tlsrelay/relay/dnsx/dnstest"
)

func start(t *testing.T) (*dnstest.Server, *Client) {
	t.Helper()
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, &Client{Server: s.Addr()}
}

func TestMXOrderImplicitNullAndNXDOMAIN(t *testing.T) {
	s, c := start(t)
	s.Zone("signed.test", true)
	s.Zone("plain.test", false)
	s.MustAdd("signed.test. MX 20 mx2.signed.test.", "signed.test. MX 10 MX1.signed.test.",
		"plain.test. A 127.0.0.1",
		"null.signed.test. MX 0 .",
		"cname.signed.test. CNAME target.plain.test.", "target.plain.test. MX 5 mx.plain.test.")
	ctx := context.Background()

	set, err := c.MX(ctx, "Signed.Test.")
	if err != nil || !set.Secure || set.Implicit || set.Null || len(set.Hosts) != 2 ||
		set.Hosts[0] != (MX{"mx1.signed.test", 10}) || set.Hosts[1] != (MX{"mx2.signed.test", 20}) {
		t.Errorf("signed.test: %+v, %v", set, err)
	}
	set, err = c.MX(ctx, "plain.test")
	if err != nil || set.Secure || !set.Implicit || len(set.Hosts) != 1 || set.Hosts[0].Host != "plain.test" {
		t.Errorf("implicit MX: %+v, %v", set, err)
	}
	set, err = c.MX(ctx, "null.signed.test")
	if err != nil || !set.Null || len(set.Hosts) != 0 || !set.Secure {
		t.Errorf("null MX: %+v, %v", set, err)
	}
	_, err = c.MX(ctx, "nowhere.signed.test")
	if !NotFound(err) {
		t.Errorf("NXDOMAIN: %v", err)
	}
	// A CNAME into an unsigned zone makes the whole answer insecure.
	set, err = c.MX(ctx, "cname.signed.test")
	if err != nil || set.Secure || len(set.Hosts) != 1 || set.Hosts[0].Host != "mx.plain.test" {
		t.Errorf("CNAME: %+v, %v", set, err)
	}
	s.Fail("signed.test", dns.TypeMX, dns.RcodeServerFailure)
	if _, err = c.MX(ctx, "signed.test"); err == nil || NotFound(err) {
		t.Errorf("SERVFAIL: %v", err)
	}
}

func TestAddrsTXTAndTLSA(t *testing.T) {
	s, c := start(t)
	s.Zone("signed.test", true)
	s.MustAdd("mx.signed.test. A 127.0.0.11", "mx.signed.test. AAAA ::1",
		"alias.signed.test. CNAME mx.signed.test.",
		`_mta-sts.signed.test. TXT "v=STSv1; " "id=20240101"`,
		"_25._tcp.mx.signed.test. TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	ctx := context.Background()
	a, err := c.Addrs(ctx, "alias.signed.test")
	if err != nil || !a.Secure || a.Name != "mx.signed.test" || len(a.IPs) != 2 || a.IPs[0].String() != "127.0.0.11" || a.IPs[1].String() != "::1" {
		t.Errorf("Addrs: %+v, %v", a, err)
	}
	txt, err := c.TXT(ctx, "_mta-sts.signed.test")
	if err != nil || !txt.Secure || len(txt.Records) != 1 || txt.Records[0] != "v=STSv1; id=20240101" {
		t.Errorf("TXT: %+v, %v", txt, err)
	}
	tl, err := c.TLSA(ctx, "_25._tcp.mx.signed.test")
	if err != nil || !tl.Secure || len(tl.Records) != 1 || tl.Records[0].Usage != 3 || !tl.Records[0].Usable() {
		t.Errorf("TLSA: %+v, %v", tl, err)
	}
	tl, err = c.TLSA(ctx, "_25._tcp.other.signed.test")
	if err != nil || len(tl.Records) != 0 || !tl.Secure {
		t.Errorf("TLSA that does not exist: %+v, %v", tl, err)
	}
	s.Fail("_25._tcp.mx.signed.test", dns.TypeTLSA, dns.RcodeServerFailure)
	if _, err = c.TLSA(ctx, "_25._tcp.mx.signed.test"); err == nil {
		t.Error("a failed TLSA lookup was taken as no records")
	}
}

// TestADTrustedOnlyFromLoopbackOrWhenTold: the AD bit of a resolver that
// is not on loopback is ignored unless trust_ad says otherwise.
func TestADTrustedOnlyFromLoopbackOrWhenTold(t *testing.T) {
	for _, c := range []struct {
		c    Client
		want bool
	}{
		{Client{Server: "127.0.0.1:53"}, true},
		{Client{Server: "[::1]:53"}, true},
		{Client{Server: "192.0.2.53:53"}, false},
		{Client{Server: "192.0.2.53:53", TrustAD: true}, true},
		{Client{Server: "localhost:53"}, false}, // a name is not an address
	} {
		if got := c.c.Trusted(); got != c.want {
			t.Errorf("%+v: Trusted() = %v", c.c, got)
		}
	}
}
