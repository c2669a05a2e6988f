package policy

import (
	"fmt"
	"testing"
)

// BenchmarkLookup routes a recipient domain through a table of 200
// destinations: exact, suffix and fallback entries.
func BenchmarkLookup(b *testing.B) {
	var dests []*Destination
	for i := 0; i < 100; i++ {
		d, _ := Compile(Spec{Domains: []string{fmt.Sprintf("d%d.example", i)}, Upstream: "mx:25"})
		s, _ := Compile(Spec{Domains: []string{fmt.Sprintf(".s%d.example", i)}, Upstream: "mx:25"})
		dests = append(dests, d, s)
	}
	f, _ := Compile(Spec{Domains: []string{"*"}, Upstream: "mx:25"})
	t, err := NewTable(append(dests, f))
	if err != nil {
		b.Fatal(err)
	}
	domains := []string{"d42.example", "mail.s77.example", "Other.Example."}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if t.Lookup(domains[i%len(domains)]) == nil {
			b.Fatal("no route")
		}
	}
}
