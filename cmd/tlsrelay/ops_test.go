package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
	"tlsrelay/relay/spool"
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

// TestSIGHUPWhileStartingDoesNotKill sends SIGHUP again and again from the
// relay's first log line until it listens, as a config manager that starts
// it and then reloads might: SIGHUP's default action would end the
// process. Each request must wait and end in a reload once it runs.
func TestSIGHUPWhileStartingDoesNotKill(t *testing.T) {
	fx := newUpstreamFixture(t)
	up, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() }) // after the relay is gone: cleanups run last first
	// A queue to recover makes the start take a while, as it does in
	// real life after an outage.
	spoolDir := t.TempDir()
	store, err := spool.Open(spoolDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Recover(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		m, err := store.Create(spool.Envelope{From: "app@legacy.test", Recipients: []string{"user@e2e.test"}})
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(m, "Subject: queued\r\n\r\nqueued before the start\r\n")
		if err := m.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, spoolDir, up.Addr(), fx.caFile)

	p := &proc{cmd: exec.Command(binary, "serve", "--config", cfg)}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	gone := make(chan struct{})
	go func() { exited <- p.cmd.Wait(); close(gone) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-gone
		if t.Failed() {
			t.Logf("tlsrelay output:\n%s", p.log())
		}
	})
	for p.log() == "" {
		select {
		case err := <-exited:
			t.Fatalf("tlsrelay exited before it logged anything: %v", err)
		default:
			time.Sleep(100 * time.Microsecond)
		}
	}
	sent := 0
	for sent == 0 || !strings.Contains(p.log(), "tlsrelay listening") {
		p.cmd.Process.Signal(syscall.SIGHUP)
		sent++
		time.Sleep(100 * time.Microsecond)
		select {
		case err := <-exited:
			t.Fatalf("tlsrelay died of a SIGHUP sent while it was starting (%d sent): %v", sent, err)
		default:
		}
	}
	t.Logf("%d SIGHUPs sent while the relay was starting", sent)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.log(), "configuration reloaded") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(p.log(), "configuration reloaded") {
		t.Fatal("the SIGHUP sent while starting was not carried out once the relay ran")
	}
	select {
	case err := <-exited:
		t.Fatalf("tlsrelay exited: %v", err)
	default:
	}
}

// TestLogReaderGoneDoesNotStopMail: the relay logs to a pipe whose reader
// goes away (a log collector restarting). Writing there must not end the
// process, as SIGPIPE would by default: mail keeps being accepted and
// delivered.
func TestLogReaderGoneDoesNotStopMail(t *testing.T) {
	fx := newUpstreamFixture(t)
	up, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	listen := freeAddr(t)
	cfg := filepath.Join(t.TempDir(), "tlsrelay.toml")
	writeConfigFile(t, cfg, strings.Replace(e2eConfig(t.TempDir(), fx.caFile, "", e2eDest{"e2e.test", up.Addr(), ""}),
		`listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", listen), 1))

	cmd := exec.Command(binary, "serve", "--config", cfg)
	logs, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	gone := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(gone) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-gone })
	sc := bufio.NewScanner(logs)
	for sc.Scan() && !strings.Contains(sc.Text(), "tlsrelay listening") {
	}
	logs.Close() // the reader goes away; the relay's next log line hits a broken pipe

	for i := 0; i < 3; i++ {
		if err := plainSend(listen, "user@e2e.test", fmt.Sprintf("Subject: %d\r\n\r\nafter the log reader left\r\n", i)); err != nil {
			select {
			case exit := <-exited:
				t.Fatalf("the relay exited when its log reader went away (%v); submit %d: %v", exit, i, err)
			case <-time.After(time.Second):
				t.Fatalf("submit %d: %v", i, err)
			}
		}
	}
	if !up.Wait(3, 10*time.Second) {
		t.Fatalf("%d of 3 messages delivered after the log reader went away", up.Count())
	}
	select {
	case err := <-exited:
		t.Fatalf("the relay exited: %v", err)
	default:
	}
}
