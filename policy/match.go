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

// Table maps recipient domains to destinations.
type Table struct {
	exact    map[string]*Destination
	suffixes map[string]*Destination // ".example.com"
	fallback *Destination
	all      []*Destination
}

// DuplicateDomainError reports two destinations that claim one pattern.
type DuplicateDomainError struct {
	Pattern     string
	First, Then int // indexes of the two [[destination]] tables, from 0
}

func (e *DuplicateDomainError) Error() string {
	return fmt.Sprintf("domain %q is claimed by destination #%d and destination #%d; each domain pattern may appear in one destination only", e.Pattern, e.First+1, e.Then+1)
}

// NewTable indexes dests. A pattern claimed twice is an error, since which
// of the two policies applies would otherwise be an accident of order.
func NewTable(dests []*Destination) (*Table, error) {
	t := &Table{exact: map[string]*Destination{}, suffixes: map[string]*Destination{}, all: dests}
	owner := map[string]int{}
	for i, d := range dests {
		for _, p := range d.Domains {
			if j, dup := owner[p]; dup {
				return nil, &DuplicateDomainError{Pattern: p, First: j, Then: i}
			}
			owner[p] = i
			switch {
			case p == "*":
				t.fallback = d
			case strings.HasPrefix(p, "."):
				t.suffixes[p] = d
			default:
				t.exact[p] = d
			}
		}
	}
	return t, nil
}

// Lookup returns the destination for a recipient domain: an exact entry,
// else the longest matching ".suffix", else "*", else nil (refuse).
func (t *Table) Lookup(domain string) *Destination {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	if domain == "" {
		return nil
	}
	if d, ok := t.exact[domain]; ok {
		return d
	}
	// Walk the parent domains from the nearest: the first ".suffix" found
	// is the longest that matches.
	for i := strings.IndexByte(domain, '.'); i >= 0; {
		if d, ok := t.suffixes[domain[i:]]; ok {
			return d
		}
		j := strings.IndexByte(domain[i+1:], '.')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return t.fallback
}

// Destinations returns every destination, in configuration order.
func (t *Table) Destinations() []*Destination { return t.all }
