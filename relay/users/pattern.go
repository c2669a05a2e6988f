package users

import (
	"tlsrelay/policy"
	"tlsrelay/relay/address"
)

// SenderPattern is one parsed sender pattern of an auth_users_file line:
// the language and matcher of policy.SenderPattern (a destination's
// `senders` use the same), applied to a parsed envelope sender:
//
//   - "*" matches every sender, the null sender <> included;
//   - "local@domain" matches that address;
//   - "*@domain" matches any local part at exactly that domain;
//   - "*@*.domain" (or ".domain") matches any local part at any subdomain
//     of domain;
//   - a '*' inside the local part ("app-*@domain") matches any run of
//     characters ('/' and '.' included, '@' never).
//
// Local parts and domains compare case-insensitively. Only '*' is a
// wildcard: '?' and '[' are refused in patterns rather than taken
// literally, since they were wildcards before patterns were parsed.
type SenderPattern struct{ p policy.SenderPattern }

// ParseSenderPattern parses one sender pattern (see SenderPattern).
func ParseSenderPattern(p string) (SenderPattern, error) {
	sp, err := policy.ParseSenderPattern(p)
	return SenderPattern{sp}, err
}

// Match reports whether the sender a (the zero Address for <>) matches.
func (p SenderPattern) Match(a address.Address) bool {
	return p.p.Match(policy.Sender{Local: a.Local, Domain: a.Domain})
}
