package mx

import (
	"context"
	"errors"
	"strings"
	"testing"

	"tlsrelay/policy"
	"tlsrelay/relay/dnsx"
	"tlsrelay/relay/dnsx/dnstest"
)

func TestPlanOrderAndTLSABase(t *testing.T) {
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Zone("signed.test", true)
	digest := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	s.MustAdd("signed.test. MX 10 a.signed.test.", "signed.test. MX 10 b.signed.test.", "signed.test. MX 20 c.signed.test.",
		"a.signed.test. A 127.0.0.1", "b.signed.test. A 127.0.0.2", "c.signed.test. A 127.0.0.3",
		// a is a CNAME: its TLSA records are looked for where it leads.
		"alias.signed.test. MX 10 mx.alias.signed.test.", "mx.alias.signed.test. CNAME real.signed.test.", "real.signed.test. A 127.0.0.4",
		"_25._tcp.real.signed.test. TLSA 3 1 1 "+digest,
		// b is a CNAME whose target has no TLSA: the MX name's are used.
		"alias2.signed.test. MX 10 mx.alias2.signed.test.", "mx.alias2.signed.test. CNAME real2.signed.test.", "real2.signed.test. A 127.0.0.5",
		"_25._tcp.mx.alias2.signed.test. TLSA 3 1 1 "+digest)
	// The test's hosts are on loopback (the plans are not dialed).
	p := &Planner{DNS: &dnsx.Client{Server: s.Addr()}, AllowInternal: true}
	ctx := context.Background()
	seen := map[string]bool{}
	for range 64 {
		plan := p.Plan(ctx, "signed.test", policy.Verify)
		if plan.Failure != nil || len(plan.Hosts) != 3 || plan.Hosts[2].Name != "c.signed.test" {
			t.Fatalf("plan: %+v", plan)
		}
		seen[plan.Hosts[0].Name] = true
	}
	if !seen["a.signed.test"] || !seen["b.signed.test"] {
		t.Errorf("equal preferences are not tried in random order: first hosts seen %v", seen)
	}
	plan := p.Plan(ctx, "alias.signed.test", policy.DANEOrSTS)
	if h := plan.Hosts[0]; !h.Auth.DANE || h.Auth.Base != "real.signed.test" || h.Auth.TLSAName != "_25._tcp.real.signed.test" || !h.SecureMX {
		t.Errorf("CNAME'd MX: %+v", h)
	}
	plan = p.Plan(ctx, "alias2.signed.test", policy.DANEOrSTS)
	if h := plan.Hosts[0]; !h.Auth.DANE || h.Auth.Base != "mx.alias2.signed.test" {
		t.Errorf("CNAME'd MX, TLSA at the MX name: %+v", h)
	}
	// verify looks up no TLSA at all.
	if h := p.Plan(ctx, "alias.signed.test", policy.Verify).Hosts[0]; h.Auth.DANE {
		t.Errorf("verify used DANE: %+v", h)
	}
}

// TestPlanRefusesInternalAddresses: a mail exchanger's internal addresses
// (loopback, private, link-local with the metadata service, an IPv4 one
// inside IPv6) are not tried; a host with only such addresses is a dns
// failure that names the address and the key allowing it. Nothing is
// dialed: plans only resolve.
func TestPlanRefusesInternalAddresses(t *testing.T) {
	s, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.MustAdd("lo.test. MX 10 mx.lo.test.", "mx.lo.test. A 127.0.0.1",
		"meta.test. MX 10 mx.meta.test.", "mx.meta.test. A 169.254.169.254",
		"mapped.test. MX 10 mx.mapped.test.", "mx.mapped.test. AAAA 64:ff9b::a01:203",
		"mixed.test. MX 10 mx.mixed.test.", "mx.mixed.test. A 192.168.1.1", "mx.mixed.test. A 8.8.8.8")
	ctx := context.Background()
	p := &Planner{DNS: &dnsx.Client{Server: s.Addr()}}
	for dom, ip := range map[string]string{"lo.test": "127.0.0.1", "meta.test": "169.254.169.254", "mapped.test": "64:ff9b::a01:203"} {
		plan := p.Plan(ctx, dom, policy.Verify)
		if len(plan.Hosts) != 1 {
			t.Fatalf("%s: %+v", dom, plan)
		}
		f := plan.Hosts[0].Failure
		want := "the mail exchanger mx." + dom + " resolves to " + ip + ", an internal address; refused (set [dns] allow_internal_addresses to allow)"
		var ie *InternalAddressError
		if f == nil || f.Class != policy.DNS || f.Detail != want || !errors.As(f, &ie) || len(plan.Hosts[0].Addrs) != 0 {
			t.Errorf("%s: %+v, want a dns failure saying %q", dom, plan.Hosts[0], want)
		}
	}
	if h := p.Plan(ctx, "mixed.test", policy.Verify).Hosts[0]; h.Failure != nil || len(h.Addrs) != 1 || h.Addrs[0].String() != "8.8.8.8" {
		t.Errorf("mixed addresses: %+v, want only the public one", h)
	}
	p.AllowInternal = true
	if h := p.Plan(ctx, "lo.test", policy.Verify).Hosts[0]; h.Failure != nil || len(h.Addrs) != 1 {
		t.Errorf("allowed: %+v", h)
	}
}

func TestTLSRequiredNo(t *testing.T) {
	for msg, want := range map[string]bool{
		"From: a@b\r\nTLS-Required: No\r\n\r\nbody\r\n":                                   true,
		"From: a@b\r\ntls-required:   no  \r\n\r\n":                                       true,
		"From: a@b\r\nTLS-Required:\r\n No\r\n\r\n":                                       true,
		"From: a@b\r\nTLS-Required: Yes\r\n\r\n":                                          false,
		"From: a@b\r\n\r\nTLS-Required: No\r\n":                                           false, // in the body
		"From: a@b\r\nX-TLS-Required: No\r\n\r\n":                                         false,
		"Subject: x\r\n" + strings.Repeat("X: y\r\n", 20000) + "TLS-Required: No\r\n\r\n": false, // beyond the bound
	} {
		if got := TLSRequiredNo(strings.NewReader(msg)); got != want {
			t.Errorf("%.60q: %v", msg, got)
		}
	}
}

func TestTLSRequiredNoShortInput(t *testing.T) {
	for _, msg := range []string{"", "\r\n", " folded first", "TLS-Required: No"} {
		TLSRequiredNo(strings.NewReader(msg)) // must not panic
	}
	if !TLSRequiredNo(strings.NewReader("TLS-Required: No")) {
		t.Error("a header without an end")
	}
}
