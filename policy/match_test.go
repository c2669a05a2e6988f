package policy

import (
	"strings"
	"testing"
)

func FuzzDomainPatterns(f *testing.F) {
	for _, s := range [][2]string{{"example.com", "example.com"}, {".example.com", "a.example.com"},
		{"*", "x.y"}, {"EXAMPLE.com.", "example.COM"}, {".a", "a"}, {"a..b", "a.b"}, {"", ""}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, domain string) {
		d, err := Compile(Spec{Domains: []string{pattern}, Upstream: "mx.example.test:25"})
		if err != nil {
			return
		}
		table, err := NewTable([]*Destination{d})
		if err != nil {
			t.Fatalf("one destination cannot conflict: %v", err)
		}
		got := table.Lookup(domain) != nil
		p := d.Domains[0]
		dom := strings.TrimSuffix(strings.ToLower(domain), ".")
		var want bool
		switch {
		case p == "*":
			want = dom != ""
		case strings.HasPrefix(p, "."):
			want = strings.HasSuffix(dom, p)
		default:
			want = dom == p
		}
		if got != want {
			t.Fatalf("pattern %q (normalized %q), domain %q: matched %v, want %v", pattern, p, domain, got, want)
		}
	})
}
