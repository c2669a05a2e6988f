package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigMistakesAllReportedAtOnce: `config check` and `serve` list
// every independent mistake of a file in one run, each on its own line
// with file:line and key, and refuse it (exit 1).
func TestConfigMistakesAllReportedAtOnce(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tlsrelay.toml")
	src := `[server]
listen = "127.0.0.1:0"
lisen = "127.0.0.1:2525"

[queue]
dir = "` + filepath.Join(dir, "spool") + `"
max_age = "3 days"

[[destination]]
domains = ["example.com"]
upstream = "smtp.example.com:587"
min_tls = "1.1"

[[destination]]
domains = ["example.org"]
upstream = "smtp.example.org:587"
ca_file = "/nonexistent/ca.pem"
`
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []string{
		path + ":3: server.lisen: unknown key",
		path + `:7: queue.max_age: "3 days" is not a duration; write e.g. "30s", "5m" or "72h"`,
		path + `:12: destination[1].min_tls: "1.1" is refused`,
		path + ":17: destination[2].ca_file: open /nonexistent/ca.pem",
	}
	for _, args := range [][]string{{"config", "check", "-config", path}, {"serve", "-config", path}} {
		cmd := exec.Command(binary, args...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 {
			t.Errorf("%s: exit %d, want 1\n%s", args[0], code, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1+len(want) || lines[0] != "tlsrelay: configuration is not valid: 4 mistakes:" {
			t.Errorf("%s: want a count and %d lines:\n%s", args[0], len(want), out)
			continue
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[1+i], w) {
				t.Errorf("%s: line %d\n got %s\nwant %s…", args[0], i+2, lines[1+i], w)
			}
		}
	}
}
