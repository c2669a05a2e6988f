package main

import (
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
)

var update = flag.Bool("update", false, "rewrite the golden files of the check tests")

// normalize replaces what changes from run to run (ports, dates, keys,
// temp paths, the cipher the CPU prefers) so the output can be compared
// with a golden file.
func normalize(s, tmp string) string {
	s = strings.ReplaceAll(s, tmp, "TMP")
	for _, r := range []struct{ re, with string }{
		{`127\.0\.0\.1:\d+`, "127.0.0.1:PORT"},
		{`\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d)?( UTC|Z)?`, "DATE"},
		{`\d+ days? (left|ago)`, "N days $1"},
		{`"days_left": -?\d+`, `"days_left": N`},
		{`[A-Za-z0-9+/]{43}=`, "PIN"},
		{`TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)`, "CIPHER"},
		{`SIZE \d+`, "SIZE N"},
	} {
		s = regexp.MustCompile(r.re).ReplaceAllString(s, r.with)
	}
	return s
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/tlsrelay -run Check -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestCheckReportsOKAndFailure(t *testing.T) {
	tmp := t.TempDir()
	ca, err := certgen.NewCA("Check CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(tmp, "ca.pem")
	certgen.WriteCertFile(caFile, ca.Cert)
	good, _ := ca.Issue(certgen.Options{CommonName: "mx.check.test", DNSNames: []string{"mx.check.test"}})
	expired, _ := ca.Issue(certgen.Options{CommonName: "mx.check.test", DNSNames: []string{"mx.check.test"},
		NotBefore: time.Now().Add(-100 * 24 * time.Hour), NotAfter: time.Now().Add(-10 * 24 * time.Hour)})
	goodUp, err := sink.Start(sink.Options{Cert: good.TLSCertificate(), Hostname: "mx.check.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer goodUp.Close()
	badUp, err := sink.Start(sink.Options{Cert: expired.TLSCertificate(), Hostname: "mx.check.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer badUp.Close()

	cfg := filepath.Join(tmp, "tlsrelay.toml")
	os.WriteFile(cfg, []byte(`
[server]
hostname = "relay.check.test"
[queue]
dir = "`+filepath.Join(tmp, "spool")+`"
[[destination]]
domains = ["check.test"]
upstream = "`+goodUp.Addr()+`"
ca_file = "`+caFile+`"
server_name = "mx.check.test"
require_hostname = ["mx.check.test"]
pin_sha256 = ["`+certgen.SPKIPinOf(good.Cert)+`"]
`), 0o600)

	var raw []byte
	run := func(args ...string) (string, int) {
		cmd := exec.Command(binary, args...)
		raw, _ = cmd.Output()
		return normalize(string(raw), tmp), cmd.ProcessState.ExitCode()
	}
	out, code := run("check", "-config", cfg, "check.test")
	if code != 0 {
		t.Errorf("OK upstream: exit %d", code)
	}
	golden(t, "check_ok.txt", out)

	out, code = run("check", "-json", "-config", cfg, "check.test")
	if code != 0 {
		t.Errorf("OK upstream, JSON: exit %d", code)
	}
	var parsed map[string]any
	if err := json.Unmarshal(raw, &parsed); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out)
	}
	golden(t, "check_ok.json", out)

	args := []string{"check", "-ca-file", caFile, "-hostname", "mx.check.test", "-servername", "mx.check.test", badUp.Addr()}
	out, code = run(args...)
	if code != 1 {
		t.Errorf("expired upstream: exit %d, want 1", code)
	}
	golden(t, "check_expired.txt", out)

	out, code = run(append([]string{"check", "-json"}, args[1:]...)...)
	if code != 1 {
		t.Errorf("expired upstream, JSON: exit %d, want 1", code)
	}
	golden(t, "check_expired.json", out)

	if badUp.Count() != 0 || goodUp.Count() != 0 {
		t.Errorf("check sent mail: %d, %d messages", goodUp.Count(), badUp.Count())
	}
	if _, code := run("check", "-config", cfg, "unclaimed.test"); code != 2 {
		t.Errorf("unclaimed domain: exit %d, want 2", code)
	}
	if _, code := run("check", "-min-tls", "1.0", "127.0.0.1:1"); code != 2 {
		t.Errorf("min-tls 1.0: exit %d, want 2", code)
	}
	if _, code := run("check", freeAddr(t)); code != 3 {
		t.Errorf("nothing listening: exit %d, want 3", code)
	}
}

// TestCheckConfirmsIncompleteChain serves the missing intermediate at the
// leaf's AIA URL (on loopback) and expects check to confirm the diagnosis.
func TestCheckConfirmsIncompleteChain(t *testing.T) {
	root, _ := certgen.NewCA("AIA Root")
	inter, interCert, _ := root.Intermediate("AIA Intermediate", certgen.Options{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(interCert.Cert.Raw) }))
	defer srv.Close()
	leaf, _ := inter.Issue(certgen.Options{CommonName: "mx.check.test", DNSNames: []string{"mx.check.test"},
		IssuingCertificateURL: []string{srv.URL + "/inter.crt"}})
	up, err := sink.Start(sink.Options{Cert: leaf.TLSCertificate(), Hostname: "mx.check.test"}) // leaf only: no intermediate
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "root.pem")
	certgen.WriteCertFile(caFile, root.Cert)
	cmd := exec.Command(binary, "check", "-ca-file", caFile, "-hostname", "mx.check.test", "-servername", "mx.check.test", up.Addr())
	out, _ := cmd.Output()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "tls_failure=incomplete_chain") ||
		!strings.Contains(string(out), "confirmed: "+srv.URL+"/inter.crt serves") {
		t.Fatalf("exit %d:\n%s", cmd.ProcessState.ExitCode(), out)
	}
}

// TestCheckDoesNotFollowAIARedirects: the leaf's AIA URL (on loopback, as
// is the upstream, so loopback is allowed) redirects to the intermediate;
// check must not follow it, and says so.
func TestCheckDoesNotFollowAIARedirects(t *testing.T) {
	root, _ := certgen.NewCA("AIA Root")
	inter, interCert, _ := root.Intermediate("AIA Intermediate", certgen.Options{})
	var followed atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/inter.crt" {
			followed.Add(1)
			w.Write(interCert.Cert.Raw)
			return
		}
		http.Redirect(w, r, "/inter.crt", http.StatusMovedPermanently)
	}))
	defer srv.Close()
	leaf, _ := inter.Issue(certgen.Options{CommonName: "mx.check.test", DNSNames: []string{"mx.check.test"},
		IssuingCertificateURL: []string{srv.URL + "/moved.crt"}})
	up, err := sink.Start(sink.Options{Cert: leaf.TLSCertificate(), Hostname: "mx.check.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "root.pem")
	certgen.WriteCertFile(caFile, root.Cert)
	cmd := exec.Command(binary, "check", "-ca-file", caFile, "-hostname", "mx.check.test", "-servername", "mx.check.test", up.Addr())
	out, _ := cmd.Output()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "tls_failure=incomplete_chain") ||
		!strings.Contains(string(out), "could not confirm from "+srv.URL+"/moved.crt: HTTP 301") ||
		!strings.Contains(string(out), "redirects are not followed") || followed.Load() != 0 {
		t.Fatalf("exit %d, %d requests for the redirect's target:\n%s", cmd.ProcessState.ExitCode(), followed.Load(), out)
	}
}
