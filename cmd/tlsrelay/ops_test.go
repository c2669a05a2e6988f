package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
)

// metricsAddr finds the metrics listener's address in the relay's log.
func (p *proc) metricsAddr(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`"msg":"metrics listening","addr":"([^"]+)"`).FindStringSubmatch(p.log())
	if m == nil {
		t.Fatalf("no metrics listener in the log:\n%s", p.log())
	}
	return m[1]
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of one sample line ("name{labels}") or -1.
func metric(text, sample string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, sample+" ") {
			v, _ := strconv.ParseFloat(strings.TrimPrefix(line, sample+" "), 64)
			return v
		}
	}
	return -1
}

// TestMetricsHealthAndReload runs the binary with metrics on, checks the
// counters move on acceptance, delivery and a TLS refusal, then reloads a
// good and a bad configuration with SIGHUP.
func TestMetricsHealthAndReload(t *testing.T) {
	fx := newUpstreamFixture(t)
	good, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	expiredLeaf, err := reissueExpired(t, fx)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := sink.Start(sink.Options{Cert: expiredLeaf})
	if err != nil {
		t.Fatal(err)
	}
	defer expired.Close()
	down := freeAddr(t)
	spool := t.TempDir()
	cfgPath := filepath.Join(t.TempDir(), "tlsrelay.toml")
	write := func(movedTo string) {
		writeConfigFile(t, cfgPath, e2eConfig(spool, fx.caFile, "[metrics]\nlisten = \"127.0.0.1:0\"\n",
			e2eDest{"good.test", good.Addr(), ""},
			e2eDest{"expired.test", expired.Addr(), `on_failure = "reject"`},
			e2eDest{"moved.test", movedTo, ""}))
	}
	write(down)
	p := startBinary(t, cfgPath)
	base := "http://" + p.metricsAddr(t)

	if code, body := httpGet(t, base+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz: %d %q", code, body)
	}
	_, before := httpGet(t, base+"/metrics")
	if v := metric(before, "tlsrelay_messages_accepted_total"); v != 0 {
		t.Fatalf("accepted before any mail: %v\n%s", v, before)
	}

	if err := plainSend(p.addr, "a@good.test", "Subject: m\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	if !good.Wait(1, 10*time.Second) {
		t.Fatal("not delivered")
	}
	if err := plainSend(p.addr, "a@expired.test", "Subject: m\r\n\r\nx\r\n"); err == nil {
		t.Fatal("expired upstream accepted")
	}
	eventuallyMetrics := func(sample string, want float64) string {
		t.Helper()
		var text string
		eventually(t, func() bool {
			_, text = httpGet(t, base+"/metrics")
			return metric(text, sample) == want
		})
		return text
	}
	text := eventuallyMetrics(`tlsrelay_delivery_attempts_total{destination="good.test",result="delivered"}`, 1)
	for sample, want := range map[string]float64{
		"tlsrelay_messages_accepted_total":                                              1,
		`tlsrelay_messages_rejected_total{reason="delivery_failed"}`:                    1,
		`tlsrelay_tls_failures_total{class="expired",destination="expired.test"}`:       1,
		`tlsrelay_delivery_attempts_total{destination="expired.test",result="expired"}`: 1,
		`tlsrelay_delivery_latency_seconds_count{destination="good.test"}`:              1,
		`tlsrelay_config_last_reload_successful`:                                        1,
	} {
		if got := metric(text, sample); got != want {
			t.Errorf("%s = %v, want %v", sample, got, want)
		}
	}
	expiry := metric(text, fmt.Sprintf(`tlsrelay_upstream_cert_earliest_expiry_timestamp_seconds{destination="good.test",upstream=%q}`, good.Addr()))
	if want := float64(fx.leaf.Cert.NotAfter.Unix()); expiry != want {
		t.Errorf("certificate expiry gauge %v, want %v", expiry, want)
	}

	// Queue a message for a destination whose upstream is down...
	if err := plainSend(p.addr, "b@moved.test", "Subject: moved\r\n\r\nx\r\n"); err != nil {
		t.Fatal(err)
	}
	eventuallyMetrics("tlsrelay_queue_messages", 1)
	// ...a bad configuration is refused and the old one kept...
	os.WriteFile(cfgPath, []byte("[server\nbroken"), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	eventuallyMetrics(`tlsrelay_config_reloads_total{result="failure"}`, 1)
	eventuallyMetrics("tlsrelay_config_last_reload_successful", 0)
	if err := plainSend(p.addr, "c@good.test", "Subject: m\r\n\r\nx\r\n"); err != nil {
		t.Fatalf("after a refused reload the relay does not work: %v", err)
	}
	// ...and a good one re-routes the queued message on its next attempt.
	write(good.Addr())
	p.cmd.Process.Signal(syscall.SIGHUP)
	eventuallyMetrics(`tlsrelay_config_reloads_total{result="success"}`, 1)
	eventually(t, func() bool {
		for _, m := range good.Messages() {
			if m.To[0] == "b@moved.test" {
				return true
			}
		}
		return false
	})
	eventuallyMetrics("tlsrelay_queue_messages", 0)
	if !strings.Contains(p.log(), "configuration reload refused") {
		t.Error("the refused reload is not logged")
	}
}

// reissueExpired returns a certificate for mx.e2e.test from the fixture's
// CA that expired two days ago.
func reissueExpired(t *testing.T, fx *upstreamFixture) (cert tls.Certificate, err error) {
	t.Helper()
	iss, err := fx.ca.Issue(certgen.Options{CommonName: "mx.e2e.test", DNSNames: []string{"mx.e2e.test"},
		NotBefore: time.Now().Add(-30 * 24 * time.Hour), NotAfter: time.Now().Add(-48 * time.Hour)})
	if err != nil {
		return cert, err
	}
	return iss.TLSCertificate(), nil
}
