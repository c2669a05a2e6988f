package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Sender is an envelope sender as routing sees it: the parsed local part
// (its value, quoting removed) and domain. The zero Sender is the null
// sender <> (bounces).
type Sender struct {
	Local, Domain string
}

// IsNull reports whether s is the null sender <>.
func (s Sender) IsNull() bool { return s == Sender{} }

// SenderPattern is one parsed sender pattern: a destination's `senders`
// and an auth_users_file line's sender list share this language and this
// matcher. It matches a sender on its parsed parts, never as a string:
//
//   - "*" matches every sender, the null sender <> included (not allowed
//     in a destination's senders: a destination without senders already
//     takes every sender);
//   - "local@domain" matches that address;
//   - "*@domain" matches any local part at exactly that domain;
//   - ".domain" and "*@*.domain" match any local part at any subdomain of
//     domain (not domain itself), as ".domain" does for recipients;
//   - a '*' inside the local part ("app-*@domain") matches any run of
//     characters ('/' and '.' included, '@' never).
//
// Local parts and domains compare case-insensitively. Only '*' is a
// wildcard: '?' and '[' are refused in patterns rather than taken
// literally. The null sender matches no pattern but "*".
type SenderPattern struct {
	text   string // as written, lower-cased
	any    bool   // "*": every sender
	local  string // lower-case; '*' matches any run of characters but '@'
	domain string // lower-case canonical domain
	subs   bool   // subdomains of domain only
}

// ParseSenderPattern parses one sender pattern (see SenderPattern).
func ParseSenderPattern(p string) (SenderPattern, error) {
	p = strings.ToLower(strings.TrimSpace(p))
	if p == "*" {
		return SenderPattern{text: p, any: true}, nil
	}
	bad := func(why string) (SenderPattern, error) {
		return SenderPattern{}, fmt.Errorf("bad sender pattern %q: %s (write user@domain, *@domain, .domain or *@*.domain for its subdomains, or *)", p, why)
	}
	var local, domain string
	subs := false
	if rest, ok := strings.CutPrefix(p, "."); ok {
		local, domain, subs = "*", rest, true
	} else {
		at := strings.LastIndexByte(p, '@')
		if at < 0 {
			return bad("it has no '@'")
		}
		local, domain = p[:at], p[at+1:]
		if rest, ok := strings.CutPrefix(domain, "*."); ok {
			subs, domain = true, rest
		}
	}
	if local == "" || strings.ContainsAny(local, "@?[]\\\" \t") {
		return bad("the local part must be a plain local part or contain '*'")
	}
	if strings.ContainsAny(local, "%!,") {
		return bad("the local part holds '%', '!' or ',', which no sender may use")
	}
	d, ok := senderDomain(domain)
	if !ok || strings.HasPrefix(d, "[") && subs {
		return bad("the domain is not a domain name")
	}
	return SenderPattern{text: p, local: local, domain: d, subs: subs}, nil
}

// senderDomain returns the canonical lower-case form of a pattern's
// domain: LDH labels (the last not all digits), or an address literal
// "[192.0.2.1]" / "[ipv6:2001:db8::1]" in the form the address parser
// gives a sender's domain (lower-cased for comparison).
func senderDomain(d string) (string, bool) {
	if inner, ok := strings.CutPrefix(d, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		if !ok {
			return "", false
		}
		if v6, ok := strings.CutPrefix(inner, "ipv6:"); ok {
			a, err := netip.ParseAddr(v6)
			if err != nil || !a.Is6() || a.Zone() != "" {
				return "", false
			}
			return "[ipv6:" + a.String() + "]", true
		}
		a, err := netip.ParseAddr(inner)
		if err != nil || !a.Is4() {
			return "", false
		}
		return "[" + a.String() + "]", true
	}
	d = strings.TrimSuffix(d, ".")
	if !isDomainName(d) || strings.Contains(d, "_") {
		return "", false
	}
	labels := strings.Split(d, ".")
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", false
	}
	return d, true
}

// String returns the pattern as written (lower-cased).
func (p SenderPattern) String() string { return p.text }

// IsAny reports whether p is "*", which matches every sender.
func (p SenderPattern) IsAny() bool { return p.any }

// IsAddress reports whether p names one exact address (no '*').
func (p SenderPattern) IsAddress() bool {
	return !p.any && !p.subs && !strings.Contains(p.local, "*")
}

// Match reports whether sender s (the zero Sender for <>) matches p.
func (p SenderPattern) Match(s Sender) bool {
	if p.any {
		return true
	}
	if s.IsNull() {
		return false
	}
	d := strings.ToLower(s.Domain)
	if p.subs {
		if !strings.HasSuffix(d, "."+p.domain) {
			return false
		}
	} else if d != p.domain {
		return false
	}
	return globLocal(p.local, strings.ToLower(s.Local))
}

// specificity orders patterns for routing: an exact domain before any
// subdomain pattern, a longer subdomain suffix before a shorter one; then
// an exact local part before one with '*', more literal characters
// before fewer. So "billing@example.com" beats "app-*@example.com",
// which beats "*@example.com", which beats ".example.com".
func (p SenderPattern) specificity() [2]int {
	if p.any {
		return [2]int{-1, -1}
	}
	dom := len(p.domain)
	if !p.subs {
		dom += 1 << 16
	}
	loc := len(p.local) - strings.Count(p.local, "*")
	if !strings.Contains(p.local, "*") {
		loc += 1 << 16
	}
	return [2]int{dom, loc}
}

// moreSpecific reports whether a comes before b in routing precedence.
func moreSpecific(a, b [2]int) bool {
	return a[0] > b[0] || a[0] == b[0] && a[1] > b[1]
}

// overlaps reports whether some sender matches both p and q.
func (p SenderPattern) overlaps(q SenderPattern) bool {
	if p.any || q.any {
		return true
	}
	switch {
	case !p.subs && !q.subs:
		if p.domain != q.domain {
			return false
		}
	case p.subs && q.subs:
		if !strings.HasSuffix(p.domain, "."+q.domain) && !strings.HasSuffix(q.domain, "."+p.domain) && p.domain != q.domain {
			return false
		}
	case p.subs:
		if !strings.HasSuffix(q.domain, "."+p.domain) {
			return false
		}
	default:
		if !strings.HasSuffix(p.domain, "."+q.domain) {
			return false
		}
	}
	return globsOverlap(p.local, q.local)
}

// globsOverlap reports whether some string matches both glob patterns,
// where '*' is any run of characters: a search over the pairs of
// positions in the two patterns, len(a)*len(b) states at most.
func globsOverlap(a, b string) bool {
	seen := map[[2]int]bool{}
	var reach func(i, j int) bool
	reach = func(i, j int) bool {
		if i == len(a) && j == len(b) {
			return true
		}
		if seen[[2]int{i, j}] {
			return false
		}
		seen[[2]int{i, j}] = true
		sa := i < len(a) && a[i] == '*'
		sb := j < len(b) && b[j] == '*'
		switch {
		case sa && reach(i+1, j): // a's star ends here
			return true
		case sb && reach(i, j+1):
			return true
		case i == len(a) || j == len(b):
			return false
		case sa && sb:
			return false // both stars: covered by ending either
		case sa:
			return reach(i, j+1) // a's star takes b's character
		case sb:
			return reach(i+1, j)
		default:
			return a[i] == b[j] && reach(i+1, j+1)
		}
	}
	return reach(0, 0)
}

// globLocal matches a local part against a pattern in which '*' stands
// for any run of characters other than '@'. It is the linear
// backtracking-on-the-last-star match, so no pattern costs more than
// len(pattern)*len(s) steps.
func globLocal(pattern, s string) bool {
	if strings.IndexByte(s, '@') >= 0 {
		return false
	}
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			mark++
			p, i = star+1, mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
