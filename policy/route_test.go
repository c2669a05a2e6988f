package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func mustCompile(t *testing.T, s Spec) *Destination {
	t.Helper()
	if s.Upstream == "" && len(s.Upstreams) == 0 {
		s.Upstream = "mx.example.test:25"
	}
	d, err := Compile(s)
	if err != nil {
		t.Fatalf("Compile(%+v): %v", s, err)
	}
	return d
}

func sender(a string) Sender {
	if a == "" {
		return Sender{}
	}
	at := strings.LastIndexByte(a, '@')
	return Sender{Local: a[:at], Domain: a[at+1:]}
}

// TestRoutePrecedence: a destination whose senders match wins over one
// without; among equals the most specific recipient pattern, then the
// most specific sender pattern; the null sender matches no senders.
func TestRoutePrecedence(t *testing.T) {
	dests := []*Destination{
		mustCompile(t, Spec{Domains: []string{"*"}}),                                                                  // 0: the rest
		mustCompile(t, Spec{Domains: []string{"example.net"}}),                                                        // 1
		mustCompile(t, Spec{Domains: []string{"billing.example"}, Senders: []string{"billing@example.com"}}),          // 2
		mustCompile(t, Spec{Domains: []string{"*"}, Senders: []string{"*@alerts.example.com"}}),                       // 3
		mustCompile(t, Spec{Domains: []string{"example.net"}, Senders: []string{".example.org"}}),                     // 4
		mustCompile(t, Spec{Domains: []string{"example.net"}, Senders: []string{"*@mail.example.org"}}),               // 5
		mustCompile(t, Spec{Domains: []string{".example.net"}, Senders: []string{"app-*@example.com", "ops@x.test"}}), // 6
		mustCompile(t, Spec{Domains: []string{".example.net"}, Senders: []string{"*@example.com"}}),                   // 7
		mustCompile(t, Spec{Domains: []string{"billing.example"}, Senders: []string{"*@example.com"}}),                // 8
	}
	tab, err := NewTable(dests)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from, domain string
		want         int // -1: refused
		sender       string
	}{
		{"someone@example.com", "example.net", 1, ""},
		{"", "example.net", 1, ""},                                         // bounces route by recipient alone
		{"a@alerts.example.com", "example.net", 3, "*@alerts.example.com"}, // senders match beats no senders, even by "*"
		{"a@b.example.org", "example.net", 4, ".example.org"},
		{"a@mail.example.org", "example.net", 5, "*@mail.example.org"}, // *@domain beats .suffix
		{"app-x@example.com", "a.example.net", 6, "app-*@example.com"}, // local with '*' beats *@domain
		{"other@example.com", "a.example.net", 7, "*@example.com"},
		{"billing@example.com", "billing.example", 2, "billing@example.com"}, // exact address first
		{"x@example.com", "billing.example", 8, "*@example.com"},
		{"x@nowhere.test", "billing.example", 0, ""}, // neither's senders match: the "*" without senders
		{"", "billing.example", 0, ""},
		{"a@alerts.example.com", "billing.example", 3, "*@alerts.example.com"},
	} {
		r := tab.Route(sender(tc.from), tc.domain)
		got := slices.Index(dests, r.Destination)
		if got != tc.want || r.Sender != tc.sender {
			t.Errorf("route(%q, %q) = #%d by sender %q, want #%d by %q; considered %+v", tc.from, tc.domain, got, r.Sender, tc.want, tc.sender, r.Considered)
		}
		if c := tab.Choose(sender(tc.from), tc.domain); c != r.Destination {
			t.Errorf("Choose(%q, %q) differs from Route", tc.from, tc.domain)
		}
	}
	// The explanation names every candidate and why.
	r := tab.Route(sender("x@nowhere.test"), "billing.example")
	var verdicts []string
	for _, c := range r.Considered {
		verdicts = append(verdicts, c.Recipient+": "+c.Verdict)
	}
	all := strings.Join(verdicts, "\n")
	for _, want := range []string{"none of its senders matches", `chosen: it claims the domain by "*"`} {
		if !strings.Contains(all, want) {
			t.Errorf("explanation lacks %q:\n%s", want, all)
		}
	}
	// No route: only destinations with senders claim it.
	tab2, _ := NewTable([]*Destination{mustCompile(t, Spec{Domains: []string{"x.test"}, Senders: []string{"a@b.test"}})})
	if d := tab2.Choose(sender("c@b.test"), "x.test"); d != nil {
		t.Errorf("a sender no pattern matches got a route: %v", d.Name())
	}
}

// TestRouteAmbiguity: two destinations that could both claim one
// (sender, recipient) with equal specificity are refused, naming both.
func TestRouteAmbiguity(t *testing.T) {
	for _, tc := range []struct {
		a, b []string
		bad  bool
	}{
		{[]string{"*@example.com"}, []string{"*@example.com"}, true},
		{[]string{"a@example.com"}, []string{"A@Example.com"}, true},
		{[]string{"app-*@example.com"}, []string{"*-app@example.com"}, true}, // "app-app" matches both
		{[]string{"a-*@example.com"}, []string{"b-*@example.com"}, false},    // disjoint
		{[]string{".example.com"}, []string{"*@*.example.com"}, true},
		{[]string{"*@example.com"}, []string{"a@example.com"}, false}, // different specificity
		{[]string{".example.com"}, []string{".a.example.com"}, false},
		{[]string{"*@example.com"}, []string{"*@example.org"}, false},
	} {
		a := mustCompile(t, Spec{Domains: []string{"x.test"}, Senders: tc.a})
		b := mustCompile(t, Spec{Domains: []string{"y.test", "x.test"}, Senders: tc.b})
		_, err := NewTable([]*Destination{a, b})
		var ae *AmbiguousRouteError
		if got := errors.As(err, &ae); got != tc.bad {
			t.Errorf("%v vs %v: error %v, want ambiguous=%v", tc.a, tc.b, err, tc.bad)
			continue
		}
		if tc.bad && (!strings.Contains(err.Error(), "destination #1") || !strings.Contains(err.Error(), "destination #2") || ae.Recipient != "x.test") {
			t.Errorf("the error does not name both destinations and the pattern: %v", err)
		}
	}
	// Without senders, today's duplicate error stays.
	_, err := NewTable([]*Destination{mustCompile(t, Spec{Domains: []string{"x.test"}}), mustCompile(t, Spec{Domains: []string{"x.test"}})})
	var de *DuplicateDomainError
	if !errors.As(err, &de) {
		t.Errorf("two destinations without senders on one domain: %v", err)
	}
}

// TestHops: a list of upstreams becomes hops tried in order, each with
// its own host as the default required name and SNI; everything else is
// the destination's.
func TestHops(t *testing.T) {
	d := mustCompile(t, Spec{Domains: []string{"x.test"}, Upstreams: Upstreams{"a.example:587", "b.example:2525"}, MinTLS: "1.3", PinSHA256: nil})
	hops := d.Hops()
	if len(hops) != 2 || hops[0] != d || hops[1].Upstream != "b.example:2525" || hops[1].Parent() != d || d.Parent() != d {
		t.Fatalf("hops: %+v", hops)
	}
	if hops[1].ServerName != "b.example" || !slices.Equal(hops[1].RequireHostname, []string{"b.example"}) || hops[1].MinTLS != d.MinTLS || hops[0].ServerName != "a.example" {
		t.Errorf("hop policy: %+v", hops[1])
	}
	named := mustCompile(t, Spec{Domains: []string{"x.test"}, Upstreams: Upstreams{"a.example:587", "b.example:587"}, RequireHostname: []string{".example"}, ServerName: "mx.example"})
	if h := named.Hops()[1]; h.ServerName != "mx.example" || !slices.Equal(h.RequireHostname, []string{".example"}) {
		t.Errorf("configured names must apply to every hop: %+v", h)
	}
	for _, bad := range []Upstreams{{"a.example:587", "a.example:587"}, {"a.example"}, {}} {
		if _, err := Compile(Spec{Domains: []string{"x.test"}, Upstreams: bad}); err == nil || !strings.Contains(err.Error(), "upstream") {
			t.Errorf("upstream %q: %v", bad, err)
		}
	}
}

// TestRoutingKeys: senders, limits and rewriting are checked at load.
func TestRoutingKeys(t *testing.T) {
	d := mustCompile(t, Spec{Domains: []string{"x.test"}, MaxConnections: 3, MaxMessagesPerMinute: 60, MaxRecipientsPerMessage: 100,
		EnvelopeFrom: "App@Contoso.COM", HeaderFrom: "keep"})
	if d.Limits != (Limits{3, 60, 100}) || d.Rewrite.EnvelopeFrom != "App@contoso.com" || d.Rewrite.HeaderFrom {
		t.Errorf("compiled: %+v %+v", d.Limits, d.Rewrite)
	}
	for key, s := range map[string]Spec{
		"senders":                    {Senders: []string{"*"}},
		"max_connections":            {MaxConnections: -1},
		"max_messages_per_minute":    {MaxMessagesPerMinute: 1 << 30},
		"envelope_from":              {EnvelopeFrom: "*@contoso.com"},
		"header_from":                {HeaderFrom: "rewrite"}, // needs envelope_from
		"max_recipients_per_message": {MaxRecipientsPerMessage: -5},
	} {
		s.Domains, s.Upstream = []string{"x.test"}, "mx:25"
		_, err := Compile(s)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Key != key {
			t.Errorf("%s: %v", key, err)
		}
	}
	if _, err := Compile(Spec{Domains: []string{"x.test"}, Upstream: "mx:25", HeaderFrom: "bogus", EnvelopeFrom: "a@b.test"}); err == nil {
		t.Error("header_from = bogus accepted")
	}
	d = mustCompile(t, Spec{Domains: []string{"x.test"}, Upstream: "mx:25", HeaderFrom: "rewrite", EnvelopeFrom: "App@Contoso.COM"})
	if d.Rewrite != (Rewrite{EnvelopeFrom: "App@contoso.com", HeaderFrom: true}) {
		t.Errorf("header_from = rewrite compiled to %+v", d.Rewrite)
	}
}
