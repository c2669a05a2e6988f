package users

import (
	"strings"
	"testing"

	"tlsrelay/relay/address"
)

// TestSenderPatterns: patterns match on the parsed (local part, domain),
// never as a glob over the raw string.
func TestSenderPatterns(t *testing.T) {
	a := func(local, domain string) address.Address { return address.Address{Local: local, Domain: domain} }
	null := address.Address{}
	for _, tc := range []struct {
		pattern string
		sender  address.Address
		want    bool
	}{
		{"app@example.com", a("app", "example.com"), true},
		{"app@example.com", a("APP", "example.com"), true},
		{"App@Example.COM", a("app", "example.com"), true},
		{"app@example.com", a("app2", "example.com"), false},
		{"app@example.com", a("app", "sub.example.com"), false},
		{"app@example.com", null, false},
		{"*@example.com", a("anyone", "example.com"), true},
		{"*@example.com", a("a/b", "example.com"), true}, // path.Match's '*' stopped at '/'
		{"*@example.com", a("a.b+c", "example.com"), true},
		{"*@example.com", a("john doe", "example.com"), true},
		{"*@example.com", a("x", "sub.example.com"), false},
		{"*@example.com", a("x", "example.com.evil"), false},
		{"*@example.com", null, false},
		// A local part that ends in "@example.com" is not at example.com
		// (the parser refuses it; the matcher must not rely on that).
		{"*@sender.test", a("ceo@sender.test", "evil.example"), false},
		{"*@sender.test", a("ceo@evil.example> X=", "sender.test"), false},
		{"app@sender.test", a("app@sender.test", "sender.test"), false},
		{"*@*.example.com", a("x", "a.b.example.com"), true},
		{"*@*.example.com", a("x", "example.com"), false},
		{"*@*.example.com", a("x", "badexample.com"), false},
		{"app-*@example.com", a("app-billing", "example.com"), true},
		{"app-*@example.com", a("app-", "example.com"), true},
		{"app-*@example.com", a("other", "example.com"), false},
		{"*-bounces*@example.com", a("list-bounces+x=y", "example.com"), true},
		{"a*b*c@example.com", a("a/x/b/y/c", "example.com"), true},
		{"a*b*c@example.com", a("abcab", "example.com"), false},
		{"*", a("anyone", "anywhere.example"), true},
		{"*", null, true},
	} {
		p, err := ParseSenderPattern(tc.pattern)
		if err != nil {
			t.Errorf("ParseSenderPattern(%q): %v", tc.pattern, err)
			continue
		}
		if got := p.Match(tc.sender); got != tc.want {
			t.Errorf("%q matches %#v: %v, want %v", tc.pattern, tc.sender, got, tc.want)
		}
	}
}

func TestBadSenderPatterns(t *testing.T) {
	for _, p := range []string{"", "app", "@example.com", "app@", "a?b@example.com", "[ab]@example.com",
		"a%b@example.com", "a b@example.com", "*@exa mple.com", "*@*", "*@*.[192.0.2.1]", "x@y@example.com"} {
		if _, err := ParseSenderPattern(p); err == nil {
			t.Errorf("ParseSenderPattern(%q) accepted", p)
		} else if !strings.Contains(err.Error(), "sender pattern") {
			t.Errorf("ParseSenderPattern(%q): %v does not say what is wrong", p, err)
		}
	}
}

// TestMaySendParsesTheSender: the string form goes through the address
// parser, so a quoted local part ending in the allowed domain, or a
// second address pasted after it, is refused.
func TestMaySendParsesTheSender(t *testing.T) {
	h, err := HashLine("alice", "alice-password", []string{"*@sender.test"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseLine(h)
	if err != nil {
		t.Fatal(err)
	}
	for from, want := range map[string]bool{
		"app@sender.test":                     true,
		"App@Sender.TEST":                     true,
		"a/b@sender.test":                     true,
		`"john doe"@sender.test`:              true,
		`"ceo@evil.example"@sender.test`:      false,
		`"ceo@evil.example> X=1"@sender.test`: false,
		"ceo@evil.example>@sender.test":       false,
		"ceo@evil.example":                    false,
		"":                                    false,
	} {
		if got := u.MaySend(from); got != want {
			t.Errorf("MaySend(%q) = %v, want %v", from, got, want)
		}
	}
	if _, err := HashLine("bob", "bob-password", []string{"a?@x.test"}); err == nil {
		t.Error("HashLine took a bad sender pattern")
	}
}
