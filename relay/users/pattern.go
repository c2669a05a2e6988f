package users

import (
	"fmt"
	"strings"

	"tlsrelay/relay/address"
)

// SenderPattern is one parsed sender pattern of an auth_users_file line.
// It matches an envelope sender on its parsed parts, never as a string:
//
//   - "*" matches every sender, the null sender <> included;
//   - "local@domain" matches that address;
//   - "*@domain" matches any local part at exactly that domain;
//   - "*@*.domain" matches any local part at any subdomain of domain;
//   - a '*' inside the local part ("app-*@domain") matches any run of
//     characters ('/' and '.' included, '@' never).
//
// Local parts and domains compare case-insensitively. Only '*' is a
// wildcard: '?' and '[' are refused in patterns rather than taken
// literally, since they were wildcards before patterns were parsed.
type SenderPattern struct {
	any    bool   // "*": every sender
	local  string // lower-case; '*' matches any run of characters but '@'
	domain string // lower-case canonical domain
	subs   bool   // domain is "*.<domain>": subdomains of it only
}

// ParseSenderPattern parses one sender pattern (see SenderPattern).
func ParseSenderPattern(p string) (SenderPattern, error) {
	p = strings.ToLower(strings.TrimSpace(p))
	if p == "*" {
		return SenderPattern{any: true}, nil
	}
	bad := func(why string) (SenderPattern, error) {
		return SenderPattern{}, fmt.Errorf("bad sender pattern %q: %s (write user@domain, *@domain, *@*.domain or *)", p, why)
	}
	at := strings.LastIndexByte(p, '@')
	if at < 0 {
		return bad("it has no '@'")
	}
	local, domain := p[:at], p[at+1:]
	if local == "" || strings.ContainsAny(local, "@?[]\\\" \t") {
		return bad("the local part must be a plain local part or contain '*'")
	}
	if strings.ContainsAny(local, "%!,") {
		return bad("the local part holds '%', '!' or ',', which no sender may use")
	}
	sp := SenderPattern{local: local}
	if rest, ok := strings.CutPrefix(domain, "*."); ok {
		sp.subs, domain = true, rest
	}
	d, err := address.ParseDomain(domain)
	if err != nil || strings.HasPrefix(d, "[") && sp.subs {
		return bad("the domain is not a domain name")
	}
	sp.domain = strings.ToLower(d)
	return sp, nil
}

// Match reports whether the sender a (the zero Address for <>) matches.
func (p SenderPattern) Match(a address.Address) bool {
	if p.any {
		return true
	}
	if a.IsNull() {
		return false
	}
	d := strings.ToLower(a.Domain)
	if p.subs {
		if !strings.HasSuffix(d, "."+p.domain) {
			return false
		}
	} else if d != p.domain {
		return false
	}
	return globLocal(p.local, strings.ToLower(a.Local))
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
