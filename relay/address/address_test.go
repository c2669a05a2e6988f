package address

import (
	"errors"
	"strings"
	"testing"
)

// TestParseDecoded is the table of what the front door accepts,
// normalizes and refuses, for addresses as go-smtp hands them over
// (quotes of a quoted local part already removed).
func TestParseDecoded(t *testing.T) {
	long := strings.Repeat("a", 63)
	for _, tc := range []struct {
		in     string
		utf8   bool
		want   string // canonical form; "" when refused
		reason Reason
	}{
		// Accepted as they are.
		{in: "user@example.com", want: "user@example.com"},
		{in: "first.last+tag@sub.example.com", want: "first.last+tag@sub.example.com"},
		{in: "o'brien/x=y{z}~@example.com", want: "o'brien/x=y{z}~@example.com"},
		{in: "User@example.com", want: "User@example.com"}, // the local part keeps its case
		{in: "user@xn--bcher-kva.example", want: "user@xn--bcher-kva.example"},
		{in: "user@localhost", want: "user@localhost"},
		{in: "user@[192.0.2.1]", want: "user@[192.0.2.1]"},
		{in: "user@[IPv6:2001:db8::1]", want: "user@[IPv6:2001:db8::1]"},
		{in: "ünïcode@example.com", utf8: true, want: "ünïcode@example.com"},
		// Re-quoted: the value is not a Dot-string.
		{in: "john doe@example.com", want: `"john doe"@example.com`},
		{in: `a"b\c@example.com`, want: `"a\"b\\c"@example.com`},
		{in: "a(b)@example.com", want: `"a(b)"@example.com`},
		{in: "a:b;c[d]@example.com", want: `"a:b;c[d]"@example.com`},
		// Normalized.
		{in: "user@Example.COM", want: "user@example.com"},
		{in: "user@example.com.", want: "user@example.com"},
		{in: "user@[ipv6:2001:DB8:0:0::1]", want: "user@[IPv6:2001:db8::1]"},
		// The example and its relatives: refused.
		{in: "victim@evil.example> ORCPT=rfc822;x@example.test", reason: Routing},
		{in: "x@sender.test@evil.example", reason: Routing},
		{in: "a@b@c", reason: Routing},
		{in: "user%other.example@example.com", reason: Routing},
		{in: "other.example!user@example.com", reason: Routing},
		{in: "a,b@example.com", reason: Routing},
		{in: "a> X@example.com", reason: Malformed},
		{in: "a<b@example.com", reason: Malformed},
		// Malformed.
		{in: "@example.com", reason: Malformed},
		{in: "user@", reason: Malformed},
		{in: "user", reason: Malformed},
		{in: "a..b@example.com", reason: Malformed},
		{in: ".a@example.com", reason: Malformed},
		{in: "a.@example.com", reason: Malformed},
		{in: "user@example.com..", reason: Malformed},
		{in: "user@.example.com", reason: Malformed},
		{in: "user@exa mple.com", reason: Malformed},
		{in: "user@-example.com", reason: Malformed},
		{in: "user@example-.com", reason: Malformed},
		{in: "user@exa_mple.com", reason: Malformed},
		{in: "user@example.com>", reason: Malformed},
		{in: `user@example.com"`, reason: Malformed},
		{in: "user@" + long + "a.com", reason: Malformed},
		{in: "user@192.0.2.1", reason: Malformed},
		{in: "user@[192.0.2.256]", reason: Malformed},
		{in: "user@[2001:db8::1]", reason: Malformed},
		{in: "user@[IPv6:192.0.2.1]", reason: Malformed},
		{in: "user@[IPv6:fe80::1%eth0]", reason: Malformed},
		{in: "user@[x-tag:abc]", reason: Malformed},
		{in: "user@[192.0.2.1", reason: Malformed},
		// Octets.
		{in: "us\x00er@example.com", reason: ControlChar},
		{in: "user@exa\rmple.com", reason: ControlChar},
		{in: "us\ter@example.com", reason: ControlChar},
		{in: "us\u0085er@example.com", utf8: true, reason: ControlChar},
		{in: "ünïcode@example.com", reason: NonASCII},
		{in: "user@bücher.example", utf8: true, reason: NonASCII},
		{in: "us\xffer@example.com", utf8: true, reason: InvalidUTF8},
		{in: "us\xffer@example.com", reason: NonASCII},
		// Lengths: 64-octet local parts are not a limit; the whole is.
		{in: strings.Repeat("l", 100) + "@example.com", want: strings.Repeat("l", 100) + "@example.com"},
		{in: strings.Repeat("l", 242) + "@example.com", want: strings.Repeat("l", 242) + "@example.com"},
		{in: strings.Repeat("l", 243) + "@example.com", reason: TooLong},
		{in: strings.Repeat(" ", 240) + "@example.com", want: `"` + strings.Repeat(" ", 240) + `"@example.com`}, // 254 once quoted
		{in: strings.Repeat(" ", 241) + "@example.com", reason: TooLong},
		{in: "u@" + strings.Repeat(long+".", 4) + "com", reason: TooLong},
	} {
		a, err := ParseDecoded(tc.in, tc.utf8)
		if tc.want != "" {
			if err != nil {
				t.Errorf("ParseDecoded(%q): %v, want %s", tc.in, err, tc.want)
			} else if a.String() != tc.want {
				t.Errorf("ParseDecoded(%q) = %s, want %s", tc.in, a, tc.want)
			}
			continue
		}
		var ae *Error
		if !errors.As(err, &ae) {
			t.Errorf("ParseDecoded(%q) = %s, %v; want a %s *Error", tc.in, a, err, tc.reason)
			continue
		}
		if ae.Reason != tc.reason {
			t.Errorf("ParseDecoded(%q): %s (%v), want %s", tc.in, ae.Reason, ae, tc.reason)
		}
	}
}

// TestParseCanonical: Parse reads RFC 5321 mailbox syntax, as the spool
// holds and the upstream receives it.
func TestParseCanonical(t *testing.T) {
	for _, tc := range []struct {
		in, local, domain string
		ok                bool
	}{
		{in: "user@example.com", local: "user", domain: "example.com", ok: true},
		{in: `"john doe"@example.com`, local: "john doe", domain: "example.com", ok: true},
		{in: `"a\"b\\c"@example.com`, local: `a"b\c`, domain: "example.com", ok: true},
		{in: `"abc"@Example.com`, local: "abc", domain: "example.com", ok: true},
		{in: `"x@sender.test"@evil.example`},
		{in: `"victim@evil.example> ORCPT=rfc822;x"@example.test`},
		{in: `victim@evil.example> ORCPT=rfc822;x@example.test`},
		{in: `john doe@example.com`},
		{in: `"john doe@example.com`},
		{in: `"john"doe@example.com`},
		{in: `"john\`},
		{in: `a,b@example.com`},
		{in: ``},
	} {
		a, err := Parse(tc.in, true)
		if !tc.ok {
			if err == nil {
				t.Errorf("Parse(%q) = %#v, want an error", tc.in, a)
			}
			continue
		}
		if err != nil || a.Local != tc.local || a.Domain != tc.domain {
			t.Errorf("Parse(%q) = %#v, %v; want {%q %q}", tc.in, a, err, tc.local, tc.domain)
		}
	}
}

// checkCanonical holds the properties of every accepted address: the
// canonical form parses back to the same value, with either parser, and
// can go between '<' and '>' on a command line as it is.
func checkCanonical(t *testing.T, a Address) {
	t.Helper()
	s := a.String()
	if b, err := Parse(s, true); err != nil || b != a {
		t.Fatalf("Parse(%q) = %#v, %v; want %#v", s, b, err, a)
	}
	if b, err := ParseDecoded(a.Local+"@"+a.Domain, true); err != nil || b != a {
		t.Fatalf("ParseDecoded(%q) = %#v, %v; want %#v", a.Local+"@"+a.Domain, b, err, a)
	}
	if len(s) > MaxLength {
		t.Fatalf("%q is longer than %d", s, MaxLength)
	}
	if strings.Count(s, "@") != 1 || strings.ContainsAny(s, "\r\n\x00<>%!,") {
		t.Fatalf("canonical form %q holds a second '@', a line break, an angle bracket or a routing form", s)
	}
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == ' ' && !quoted:
			t.Fatalf("canonical form %q has a space outside quotes", s)
		}
	}
	if quoted {
		t.Fatalf("canonical form %q has an unterminated quote", s)
	}
	if !strings.HasSuffix(s, "@"+a.Domain) || a.Domain != strings.Replace(strings.ToLower(a.Domain), "[ipv6:", "[IPv6:", 1) {
		t.Fatalf("canonical form %q does not end in its lower-case domain %q", s, a.Domain)
	}
}

// FuzzAddress: whatever go-smtp may hand over, the parser either refuses
// it with an *Error or returns an address whose canonical form round-trips
// and can never carry a second address or parameter.
func FuzzAddress(f *testing.F) {
	for _, s := range []string{
		"user@example.com", "john doe@example.com", `a"b\c@example.com`, "user@[IPv6:2001:db8::1]",
		"victim@evil.example> ORCPT=rfc822;x@example.test", "ünïcode@example.com", "a..b@x", "user@example.com.",
		"us\xffer@example.com", "a%b@c", "user@[192.0.2.1]",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, utf8 bool) {
		for _, parse := range []func(string, bool) (Address, error){ParseDecoded, Parse} {
			a, err := parse(s, utf8)
			if err != nil {
				var ae *Error
				if !errors.As(err, &ae) || ae.Reason.String() == "unknown" || ae.Detail == "" {
					t.Fatalf("%q: error %#v is not a typed *Error", s, err)
				}
				continue
			}
			if a.IsNull() {
				t.Fatalf("%q parsed as the null address", s)
			}
			if !utf8 && !a.IsASCII() {
				t.Fatalf("%q: non-ASCII accepted without SMTPUTF8", s)
			}
			checkCanonical(t, a)
		}
	})
}

func TestNullAddress(t *testing.T) {
	var a Address
	if !a.IsNull() || a.String() != "" {
		t.Fatalf("zero Address: IsNull %v, String %q", a.IsNull(), a.String())
	}
	if _, err := ParseDecoded("", false); err == nil {
		t.Fatal("ParseDecoded accepted an empty string")
	}
}
