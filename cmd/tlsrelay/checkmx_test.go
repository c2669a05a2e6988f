package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/mx/mxtest"
	"tlsrelay/relay/sink"
)

// TestCheckMX: `tlsrelay check` for an MX destination shows the MX set
// and its DNSSEC status, each host's TLSA records and security level,
// the MTA-STS policy and its cache age, and each host's TLS diagnosis.
func TestCheckMX(t *testing.T) {
	w := mxtest.New(t)
	w.DNS.Zone("check.test", true)
	other, _ := certgen.NewCA("DANE-only CA")
	daneLeaf, _ := other.Issue(certgen.Options{CommonName: "mx1.check.test", DNSNames: []string{"mx1.check.test"}})
	mx1 := w.Host("mx1.check.test", sink.Options{Cert: daneLeaf.TLSCertificate(), REQUIRETLS: true})
	mx2 := w.Host("mx2.check.test", sink.Options{})
	w.DNS.MustAdd("check.test. MX 10 mx1.check.test.", "check.test. MX 20 mx2.check.test.",
		mxtest.TLSA("mx1.check.test", policy.TLSAFor(3, daneLeaf.Cert)))
	w.STS("check.test", "20261129", mxtest.Policy("enforce", 86400, "mx2.check.test"))
	// A domain whose only host is not in its enforced policy.
	w.Host("mx.skipped.test", sink.Options{})
	w.DNS.MustAdd("skipped.test. MX 10 mx.skipped.test.")
	w.STS("skipped.test", "1", mxtest.Policy("enforce", 86400, "other.skipped.test"))

	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "tlsrelay.toml")
	os.WriteFile(cfg, []byte(`
[server]
hostname = "relay.check.test"
[queue]
dir = "`+filepath.Join(tmp, "spool")+`"
[dns]
resolver = "`+w.DNS.Addr()+`"
allow_internal_addresses = true
[[destination]]
domains = ["*"]
upstream = "mx"
ca_file = "`+w.CAFile+`"
`), 0o600)
	mxDialForTests = w.Dial
	defer func() { mxDialForTests = nil }()
	norm := func(s string) string {
		s = regexp.MustCompile(`[0-9a-f]{64}`).ReplaceAllString(s, "HEX")
		s = regexp.MustCompile(`\.\d+Z"`).ReplaceAllString(s, `Z"`)
		s = regexp.MustCompile(`\(\d+s ago\)`).ReplaceAllString(s, "(Ns ago)")
		s = regexp.MustCompile(`"cache_age_seconds": \d+`).ReplaceAllString(s, `"cache_age_seconds": N`)
		s = strings.ReplaceAll(s, w.DNS.Addr(), "RESOLVER")
		s = strings.ReplaceAll(s, w.CAFile, "CAFILE")
		return normalize(s, tmp)
	}
	run := func(args ...string) (string, int) {
		var out, errOut bytes.Buffer
		code := run(args, nil, &out, &errOut)
		if errOut.Len() > 0 {
			t.Logf("stderr: %s", errOut.String())
		}
		return out.String(), code
	}

	out, code := run("check", "-config", cfg, "check.test")
	if code != 0 {
		t.Errorf("exit %d\n%s", code, out)
	}
	for _, want := range []string{"DNSSEC-validated", "security:      dane", "_25._tcp.mx1.check.test: 3 1 1", "security:      mta-sts",
		"id 20261129, mode enforce, max_age 86400, mx mx2.check.test; fetched now", "REQUIRETLS"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	golden(t, "check_mx.txt", norm(out))

	// The second run finds the policy in the relay's cache.
	out, code = run("check", "-json", "-config", cfg, "check.test")
	var parsed struct {
		MXDNSSEC bool `json:"mx_dnssec"`
		STS      struct {
			FromCache bool `json:"from_cache"`
		} `json:"mta_sts"`
		Hosts []struct {
			Security string `json:"security"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(out), &parsed); err != nil || code != 0 || !parsed.MXDNSSEC || !parsed.STS.FromCache ||
		len(parsed.Hosts) != 2 || parsed.Hosts[0].Security != "dane" || parsed.Hosts[1].Security != "mta-sts" {
		t.Errorf("JSON: exit %d, %v, %+v\n%s", code, err, parsed, out)
	}
	golden(t, "check_mx.json", norm(out))

	out, code = run("check", "-config", cfg, "skipped.test")
	if code != 1 || !strings.Contains(out, "not tried:     mx_security (validation-failure)") || !strings.Contains(out, "verdict:       FAIL failure=mx_security") {
		t.Errorf("skipped host: exit %d\n%s", code, out)
	}
	if mx1.Count()+mx2.Count() != 0 {
		t.Error("check sent mail")
	}
}
