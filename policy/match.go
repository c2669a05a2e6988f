package policy

import (
	"fmt"
	"strings"
)

// normalizePattern lower-cases a domain pattern and checks its shape:
// "example.com" (exactly that domain), ".example.com" (any subdomain of it,
// not the domain itself) or "*" (every domain no other pattern claims).
func normalizePattern(p string) (string, error) {
	p = strings.ToLower(strings.TrimSpace(p))
	p = strings.TrimSuffix(p, ".")
	if p == "*" {
		return p, nil
	}
	name := strings.TrimPrefix(p, ".")
	if name == "" || !isDomainName(name) {
		return "", fmt.Errorf("%q is not a domain pattern; write \"example.com\", \".example.com\" (its subdomains) or \"*\"", p)
	}
	return p, nil
}

// isDomainName accepts LDH labels (and underscores, seen in the wild),
// 1-63 bytes each, up to 253 bytes in all.
func isDomainName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
