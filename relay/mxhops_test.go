package relay

import (
	"fmt"
	"testing"

	"tlsrelay/policy"
)

// TestMXHopCacheIsBounded: the hops kept for mail exchangers never exceed
// maxMXHops, however many exchangers the relay delivers to, and a reload
// forgets those of destinations it replaced while keeping the others.
func TestMXHopCacheIsBounded(t *testing.T) {
	compile := func(domain string) *policy.Destination {
		d, err := policy.Compile(policy.Spec{Domains: []string{domain}, Upstream: "smtp." + domain + ":25"})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	kept, replaced := compile("kept.test"), compile("replaced.test")
	var c hopCache
	for i := range 3 * maxMXHops {
		d := kept
		if i%2 == 1 {
			d = replaced
		}
		c.get(fmt.Sprintf("mx%d", i), func() *policy.Destination { return d })
		if n := c.size(); n > maxMXHops {
			t.Fatalf("after %d exchangers the cache holds %d hops, more than %d", i+1, n, maxMXHops)
		}
	}
	if again := c.get("mx-last", func() *policy.Destination { return kept }); c.get("mx-last", func() *policy.Destination { return replaced }) != again {
		t.Fatal("a hop kept under a key is not found again")
	}
	c.prune(func(d *policy.Destination) bool { return d == kept })
	if n := c.size(); n == 0 {
		t.Fatal("prune forgot the hops of the destination it keeps")
	}
	c.mu.Lock()
	for k, hop := range c.hops {
		if hop.Parent() != kept {
			t.Errorf("hop %s of a replaced destination survived the reload", k)
		}
	}
	c.mu.Unlock()
}
