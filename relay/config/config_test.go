package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"tlsrelay/policy/certgen"
)

func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../../config.example.toml")
	if err != nil {
		t.Fatalf("config.example.toml does not load: %v", err)
	}
	if c.Server.Listen != "127.0.0.1:2525" || c.Queue.MaxAge.Duration != 72*time.Hour || c.Queue.Workers != 16 {
		t.Errorf("unexpected values: %+v %+v", c.Server, c.Queue)
	}
	d := c.Table.Lookup("mail.example.com")
	if d == nil || d.Upstream != "smtp.example.com:587" || d.RequireHostname[0] != "smtp.example.com" {
		t.Fatalf("lookup of a subdomain: %+v", d)
	}
	if c.Table.Lookup("example.org") != nil {
		t.Error("a domain no destination claims was routed")
	}
}

// TestEveryKeyIsDocumented keeps config.example.toml complete: each key
// the loader knows appears in it.
func TestEveryKeyIsDocumented(t *testing.T) {
	raw, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c, err := Load("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if err := toml.NewEncoder(&buf).Encode(c.Effective()); err != nil {
		t.Fatal(err)
	}
	var all map[string]any
	if _, err := toml.Decode(buf.String(), &all); err != nil {
		t.Fatal(err)
	}
	for table, v := range all {
		keys := map[string]any{}
		switch tv := v.(type) {
		case map[string]any:
			keys = tv
		case []map[string]any:
			keys = tv[0]
		}
		for k := range keys {
			if !bytes.Contains(raw, []byte("\n"+k+" =")) {
				t.Errorf("[%s] %s is not in config.example.toml", table, k)
			}
		}
	}
}

func TestConfigErrorsNameKeyLineAndFix(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	ca, err := certgen.NewCA("x")
	if err != nil {
		t.Fatal(err)
	}
	certgen.WriteCertFile(caFile, ca.Cert)
	dest := "\n[[destination]]\ndomains = [\"example.com\"]\nupstream = \"smtp.example.com:587\"\n"
	cases := []struct {
		name, src, want string
	}{
		{"unknown key", "[server]\nlisten = \"127.0.0.1:2525\"\nlisen = \"x\"\n" + dest, "test.toml:3: server.lisen: unknown key"},
		{"unknown key in destination", dest + "tls_mode = \"starttls\"\n", "test.toml:5: destination.tls_mode: unknown key"},
		{"wrong type", "[server]\nmax_recipients = \"many\"\n" + dest, "test.toml:2: server.max_recipients: incompatible types"},
		{"bad duration", "[queue]\nretry_min = \"soon\"\n" + dest, `"soon" is not a duration`},
		{"min_tls 1.0", dest + "min_tls = \"1.0\"\n", "test.toml:5: destination[1].min_tls: \"1.0\" is refused"},
		{"plaintext", dest + "tls = \"none\"\n", "never sends mail without verified TLS"},
		{"missing ca_file", dest + "ca_file = \"/nonexistent/ca.pem\"\n", "destination[1].ca_file: open /nonexistent/ca.pem"},
		{"not PEM", dest + "ca_file = \"" + filepath.Join(dir, "notpem") + "\"\n", "holds no PEM certificate"},
		{"bad pin", dest + "pin_sha256 = [\"abc\"]\n", "destination[1].pin_sha256: \"abc\" is not a base64 SHA-256"},
		{"duplicate domain", dest + dest, "test.toml:7: destination[2].domains: domain \"example.com\" is claimed by destination #1 and destination #2"},
		{"no upstream", "\n[[destination]]\ndomains = [\"example.com\"]\n", "destination[1].upstream: required"},
		{"upstream without port", "\n[[destination]]\ndomains = [\"example.com\"]\nupstream = \"smtp.example.com\"\n", "is not host:port"},
		{"bad domain", "\n[[destination]]\ndomains = [\"exa mple.com\"]\nupstream = \"a:1\"\n", "is not a domain pattern"},
		{"no destination", "[server]\nlisten = \"127.0.0.1:2525\"\n", "no [[destination]] is configured"},
		{"bad network", "[server]\nallowed_networks = [\"everyone\"]\n" + dest, "server.allowed_networks: \"everyone\" is not a network"},
		{"retry order", "[queue]\nretry_min = \"1h\"\nretry_max = \"1m\"\n" + dest, "queue.retry_max"},
		{"upstream_max_age 0", "[queue]\nupstream_max_age = \"0s\"\n" + dest, "test.toml:2: queue.upstream_max_age: 0s is out of range"},
		{"upstream_max_age over a day", "[queue]\nupstream_max_age = \"25h\"\n" + dest, "queue.upstream_max_age: 25h0m0s is out of range"},
		{"password env unset", dest + "auth_username = \"u\"\nauth_password_env = \"TLSRELAY_SURELY_UNSET\"\n", "TLSRELAY_SURELY_UNSET is not set"},
		{"username without password", dest + "auth_username = \"u\"\n", "no password"},
		{"syntax", "[server\n", "test.toml:2"},
	}
	os.WriteFile(filepath.Join(dir, "notpem"), []byte("hello"), 0o600)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("test.toml", c.src)
			if err == nil {
				t.Fatalf("accepted:\n%s", c.src)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
	if _, err := Parse("ok.toml", dest+"ca_file = \""+caFile+"\"\n"); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}

func TestDestinationMatchingPrefersMostSpecific(t *testing.T) {
	src := `
[[destination]]
domains = ["*"]
upstream = "fallback:25"
[[destination]]
domains = [".example.com"]
upstream = "sub:25"
[[destination]]
domains = [".deep.example.com", "Example.COM"]
upstream = "deep:25"
`
	c, err := Parse("t.toml", src)
	if err != nil {
		t.Fatal(err)
	}
	for domain, want := range map[string]string{
		"example.com":           "deep:25",
		"EXAMPLE.com.":          "deep:25",
		"a.example.com":         "sub:25",
		"x.deep.example.com":    "deep:25",
		"deep.example.com":      "sub:25",
		"other.org":             "fallback:25",
		"notexample.com":        "fallback:25",
		"a.b.deep.example.com":  "deep:25",
		"deep.example.com.evil": "fallback:25",
	} {
		d := c.Table.Lookup(domain)
		if d == nil || d.Upstream != want {
			t.Errorf("Lookup(%q) = %v, want %s", domain, d, want)
		}
	}
}

func TestOpenRelayGuard(t *testing.T) {
	dest := "\n[[destination]]\ndomains = [\"example.com\"]\nupstream = \"smtp.example.com:587\"\n"
	dir := t.TempDir()
	usersFile := filepath.Join(dir, "users")
	os.WriteFile(usersFile, []byte("u:$2a$10$vAFEQiIUlH0TMZcrIoN29e3rHQFiyCVwhNVVjC/gPEAkuljtbQkI.\n"), 0o600)
	cases := []struct {
		server string
		ok     bool
	}{
		{`listen = "127.0.0.1:2525"`, true},
		{`listen = "[::1]:2525"`, true},
		{`listen = "localhost:2525"`, true},
		{`listen = "0.0.0.0:2525"`, false},
		{`listen = ":2525"`, false},
		{"listen = \"0.0.0.0:2525\"\nallowed_networks = [\"127.0.0.0/8\", \"::1/128\"]", false},
		{"listen = \"0.0.0.0:2525\"\nallowed_networks = [\"10.1.0.0/16\"]", true},
		{"listen = \"0.0.0.0:2525\"\nauth_required = true\nauth_users_file = \"" + usersFile + "\"", true},
	}
	for _, c := range cases {
		_, err := Parse("t.toml", "[server]\n"+c.server+"\n"+dest)
		if (err == nil) != c.ok {
			t.Errorf("%q: err %v, want ok=%v", c.server, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "auth_required = true") {
			t.Errorf("%q: the refusal does not name the ways out: %v", c.server, err)
		}
	}
}

func TestSecretFilesMustBePrivate(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o644)
	dest := "\n[[destination]]\ndomains = [\"example.com\"]\nupstream = \"smtp.example.com:587\"\nauth_username = \"u\"\nauth_password_file = \"" + pw + "\"\n"
	if _, err := Parse("t.toml", dest); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable password file: %v", err)
	}
	os.Chmod(pw, 0o600)
	if _, err := Parse("t.toml", dest); err != nil {
		t.Errorf("private password file refused: %v", err)
	}
	usersFile := filepath.Join(dir, "users")
	os.WriteFile(usersFile, []byte("u:$2a$10$vAFEQiIUlH0TMZcrIoN29e3rHQFiyCVwhNVVjC/gPEAkuljtbQkI.\n"), 0o666)
	src := "[server]\nauth_users_file = \"" + usersFile + "\"\n" + dest
	if _, err := Parse("t.toml", src); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-writable users file: %v", err)
	}
}

// TestEveryMistakeIsReportedInOneRun: independent mistakes in several
// tables and destinations all come back from one Parse, each with its
// own line, key and fix, in the file's order.
func TestEveryMistakeIsReportedInOneRun(t *testing.T) {
	src := `[server]
listen = "127.0.0.1:2525"
lisen = "x"
max_recipients = 0

[queue]
retry_min = "soon"
workers = 16

[[destination]]
domains = ["example.com"]
upstream = "smtp.example.com:587"
min_tls = "1.0"
on_failure = "drop"

[[destination]]
domains = ["example.org"]
upstream = "smtp.example.org:587"
ca_file = "/nonexistent/ca.pem"
tls_mode = "starttls"
`
	_, err := Parse("test.toml", src)
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Parse returned %T %v, want Errors", err, err)
	}
	want := []string{
		"test.toml:3: server.lisen: unknown key; check its spelling against config.example.toml",
		"test.toml:4: server.max_recipients: must be positive; write e.g. max_recipients = 100",
		`test.toml:7: queue.retry_min: "soon" is not a duration; write e.g. "30s", "5m" or "72h"`,
		`test.toml:13: destination[1].min_tls: "1.0" is refused: TLS 1.0 and 1.1 are broken and deprecated (RFC 8996); write "1.2" or "1.3"`,
		`test.toml:14: destination[1].on_failure: "drop" is not a failure policy; write "queue" or "reject"`,
		"test.toml:19: destination[2].ca_file: open /nonexistent/ca.pem",
		"test.toml:20: destination.tls_mode: unknown key",
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) || len(es) != len(want) {
		t.Fatalf("got %d mistakes, want %d:\n%s", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("mistake %d:\n got %s\nwant %s…", i+1, lines[i], w)
		}
	}
	// The parts are there for a program, too.
	if e := es[2]; e.File != "test.toml" || e.Line != 7 || e.Key != "queue.retry_min" ||
		e.Msg != `"soon" is not a duration` || e.Fix != `write e.g. "30s", "5m" or "72h"` {
		t.Errorf("retry_min mistake: %+v", *e)
	}
}

// TestDependentMistakesAreNotPiledUp: where a check needs what another
// key says, a mistake in that key is reported alone, and a syntax error
// stops everything since nothing after it can be read.
func TestDependentMistakesAreNotPiledUp(t *testing.T) {
	dest := "\n[[destination]]\ndomains = [\"example.com\"]\nupstream = \"smtp.example.com:587\"\n"
	cases := []struct {
		name, src string
		want      []string
	}{
		{"syntax error stops", "[server]\nlisen = 1\n[queue\nretry_min = \"soon\"\n" + dest,
			[]string{"test.toml:4: server: expected '.' or ']' to end table name"}},
		{"retry_max is not compared with a retry_min that did not decode",
			"[queue]\nretry_min = \"soon\"\nretry_max = \"1s\"\n" + dest,
			[]string{"test.toml:2: queue.retry_min: \"soon\" is not a duration"}},
		{"implicit TLS is not told it lacks a certificate that failed to load",
			"[server]\ntls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"\nimplicit_tls_listen = \"127.0.0.1:4650\"\n" + dest,
			[]string{"test.toml:2: server.tls_cert_file: cannot load the certificate and key"}},
		{"a value of the wrong type is not also checked as its default",
			"[server]\nmax_recipients = \"many\"\n" + dest,
			[]string{"test.toml:2: server.max_recipients: incompatible types"}},
		{"no \"no destination\" when the destinations did not decode",
			"destination = 3\n",
			[]string{"test.toml:1: destination: is not an array of tables; write [[destination]] (two brackets) above each one"}},
		{"a table where an array of tables belongs", "[destination]\ndomains = [\"example.com\"]\n",
			[]string{"test.toml:1: destination: is not an array of tables"}},
		{"an array of tables where a table belongs", "[[server]]\nlisten = \"127.0.0.1:2525\"\n" + dest,
			[]string{"test.toml:1: server: is not a table; write [server] on a line of its own"}},
		{"duplicates are found among destinations that compile, numbered as in the file",
			dest + "min_tls = \"1.1\"\n" + dest + dest + dest,
			[]string{"test.toml:5: destination[1].min_tls", "test.toml:12: destination[3].domains: domain \"example.com\" is claimed by destination #2 and destination #3",
				"test.toml:16: destination[4].domains: domain \"example.com\" is claimed by destination #2 and destination #4"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("test.toml", c.src)
			if err == nil {
				t.Fatalf("accepted:\n%s", c.src)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(c.want) {
				t.Fatalf("got %d mistakes, want %d:\n%s", len(lines), len(c.want), err)
			}
			for i, w := range c.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("got %s\nwant %s…", lines[i], w)
				}
			}
		})
	}
}
