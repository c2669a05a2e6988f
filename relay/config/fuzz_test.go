package config

import (
	"os"
	"testing"
)

func FuzzParse(f *testing.F) {
	if example, err := os.ReadFile("../../config.example.toml"); err == nil {
		f.Add(string(example))
	}
	f.Add("[[destination]]\ndomains = [\"a.b\"]\nupstream = \"a:1\"\n")
	f.Add("[server]\nlisten = 1\n")
	f.Add("[[destination]]\ndomains = [\"*\", \".x\"]\nupstream = \"[::1]:25\"\nmin_tls = \"1.3\"\npin_sha256 = [\"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"]\n")
	f.Fuzz(func(t *testing.T, src string) {
		c, err := Parse("fuzz.toml", src)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if c.Table == nil || len(c.Table.Destinations()) == 0 {
			t.Fatal("accepted a configuration without destinations")
		}
		for _, d := range c.Table.Destinations() {
			if d.MinTLS < 0x0303 {
				t.Fatalf("accepted min_tls below 1.2: %x", d.MinTLS)
			}
		}
	})
}
