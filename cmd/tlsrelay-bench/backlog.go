package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
)

// The backlog case is the issue's "long outage": applications keep
// sending while the upstream is down, the queue grows to N messages, the
// relay is restarted with all of it queued, and then the upstream comes
// back. Each figure is measured at each N, so that what grows with the
// queue shows.

// backlogRow is one N's figures.
type backlogRow struct {
	N int
	// Intake is the submit rate (msgs/s) while the upstream is down.
	Intake float64
	// RSS is the relay's resident memory with N queued (after intake).
	RSS int64
	// Spool is the disk space the spool directory takes (allocated blocks).
	Spool int64
	// List and ListJSON time `tlsrelay queue list` (and -json) to
	// /dev/null; ListRSS is the command's peak RSS.
	List, ListJSON time.Duration
	ListRSS        int64
	// Greeting is from starting the relay again until a client gets the
	// 220 greeting; Ready until /readyz says ready (recovery complete).
	Greeting, Ready time.Duration
	// Drain is the delivery rate (msgs/s) once the upstream is back.
	Drain float64
	// Probes is connection attempts per second to the down upstream,
	// over the whole time it was down.
	Probes float64
	// LogBytes is how much the relay logged while the upstream was down.
	LogBytes int64
	// Delivered is what the upstream got in the end (must be N).
	Delivered int
}

// counter is a down upstream that counts connection attempts: it accepts
// and resets each at once, which the relay sees as a failed connect.
type counter struct {
	ln       net.Listener
	accepted atomic.Int64
}

func startCounter(addr string) (*counter, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &counter{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.accepted.Add(1)
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			conn.Close()
		}
	}()
	return c, nil
}

const backlogConfig = `
[server]
listen = %q
hostname = "relay.bench.test"
max_connections = 5000
max_connections_per_ip = 5000
[queue]
dir = %q
retry_min = %q
retry_max = %q
[metrics]
listen = %q
[log]
level = "info"
format = "json"
[[destination]]
domains = ["*"]
upstream = %q
ca_file = %q
server_name = %q
require_hostname = [%q]
`

func cmdBacklog(args []string) error {
	fs := flag.NewFlagSet("backlog", flag.ExitOnError)
	relayBin := fs.String("relay", "", "path of a built tlsrelay binary")
	sizes := fs.String("sizes", "10000,50000,200000", "queue sizes to run, comma-separated")
	retry := fs.String("retry", "1s/2s", "retry_min/retry_max of the relay")
	sessions := fs.Int("sessions", 16, "concurrent sessions of the load")
	markdown := fs.String("markdown", "", "also write the table to this file")
	fs.Parse(args)
	if *relayBin == "" {
		return fmt.Errorf("-relay is required")
	}
	rmin, rmax, ok := strings.Cut(*retry, "/")
	if !ok {
		return fmt.Errorf("-retry is MIN/MAX, e.g. 1s/2s")
	}
	var ns []int
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-sizes: %q is not a count", s)
		}
		ns = append(ns, n)
	}
	fmt.Printf("machine: %s/%s, %d CPUs, %s; %s; load average %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(),
		runtime.Version(), time.Now().UTC().Format("2006-01-02 15:04 UTC"), loadAverage())

	// The healthy rate is the reference of intake and drain: measured
	// before and after the backlog runs, since on a shared machine the
	// load of other programs changes meanwhile; the table uses the mean.
	before, err := healthyRate(*relayBin, rmin, rmax, *sessions, 10000)
	if err != nil {
		return err
	}
	fmt.Printf("  healthy (empty queue, upstream up): %.0f msgs/s\n", before)
	var rows []backlogRow
	for _, n := range ns {
		row, err := runBacklog(*relayBin, rmin, rmax, *sessions, n)
		if err != nil {
			return fmt.Errorf("backlog %d: %w", n, err)
		}
		fmt.Printf("  %d: intake %.0f/s, RSS %.0f MiB, spool %.0f MiB, list %v (-json %v, %0.f MiB), greeting %v, ready %v, drain %.0f/s, %.1f connects/s, log %.1f MiB, delivered %d\n",
			n, row.Intake, mib(row.RSS), mib(row.Spool), row.List.Round(10*time.Millisecond), row.ListJSON.Round(10*time.Millisecond), mib(row.ListRSS),
			row.Greeting.Round(10*time.Millisecond), row.Ready.Round(10*time.Millisecond), row.Drain, row.Probes, mib(row.LogBytes), row.Delivered)
		rows = append(rows, row)
	}
	after, err := healthyRate(*relayBin, rmin, rmax, *sessions, 10000)
	if err != nil {
		return err
	}
	fmt.Printf("  healthy again: %.0f msgs/s; load average %s\n", after, loadAverage())
	healthy := (before + after) / 2
	table := fmt.Sprintf("healthy rate measured before and after: %.0f and %.0f msgs/s; load average at the end %s\n\n", before, after, loadAverage()) +
		renderBacklog(rows, healthy, rmin+"/"+rmax)
	fmt.Println()
	fmt.Print(table)
	if *markdown != "" {
		return os.WriteFile(*markdown, []byte(table), 0o644)
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// healthyRate is the reference: messages/s end to end into an empty relay
// whose upstream works, with the same load.
func healthyRate(bin, rmin, rmax string, sessions, n int) (float64, error) {
	dir, err := os.MkdirTemp("", "tlsrelay-backlog-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	up := freeLoopback()
	sink, err := startBenchSink(up, "mx.bench.test", filepath.Join(dir, "ca.pem"), false, "")
	if err != nil {
		return 0, err
	}
	defer sink.Close()
	r, err := startBacklogRelay(bin, dir, up, filepath.Join(dir, "ca.pem"), rmin, rmax)
	if err != nil {
		return 0, err
	}
	defer r.stop()
	count := func() (int, error) { return sink.Count(), nil }
	runLoad(loadSpec{To: r.addr, Sessions: sessions, Messages: n / 10, Size: 1024, NewConn: true, SinkCount: count, Timeout: time.Minute})
	res, err := runLoad(loadSpec{To: r.addr, Sessions: sessions, Messages: n, Size: 1024, NewConn: true, SinkCount: count, Timeout: 10 * time.Minute})
	if err != nil {
		return 0, err
	}
	return res.MsgsPerSec(), nil
}

type backlogRelay struct {
	cmd     *exec.Cmd
	cfg     string
	addr    string
	metrics string
	log     string
}

func startBacklogRelay(bin, dir, upstream, caFile, rmin, rmax string) (*backlogRelay, error) {
	r := &backlogRelay{cfg: filepath.Join(dir, "tlsrelay.toml"), addr: freeLoopback(), metrics: freeLoopback(), log: filepath.Join(dir, "relay.log")}
	text := fmt.Sprintf(backlogConfig, r.addr, filepath.Join(dir, "spool"), rmin, rmax, r.metrics, upstream, caFile, "mx.bench.test", "mx.bench.test")
	if err := os.WriteFile(r.cfg, []byte(text), 0o600); err != nil {
		return nil, err
	}
	_, _, err := r.start(bin)
	return r, err
}

// start runs the relay and returns how long until it greeted with 220 and
// until /readyz said ready.
func (r *backlogRelay) start(bin string) (greeting, ready time.Duration, err error) {
	log, err := os.OpenFile(r.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, 0, err
	}
	defer log.Close()
	r.cmd = exec.Command(bin, "serve", "-config", r.cfg)
	r.cmd.Stdout, r.cmd.Stderr = log, log
	begin := time.Now()
	if err := r.cmd.Start(); err != nil {
		return 0, 0, err
	}
	for greeting == 0 {
		if time.Since(begin) > 5*time.Minute {
			return 0, 0, fmt.Errorf("tlsrelay did not greet; see %s", r.log)
		}
		if greeted(r.addr) {
			greeting = time.Since(begin)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for ready == 0 {
		if time.Since(begin) > 5*time.Minute {
			return 0, 0, fmt.Errorf("tlsrelay did not become ready; see %s", r.log)
		}
		if resp, err := http.Get("http://" + r.metrics + "/readyz"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Since(begin)
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return greeting, ready, nil
}

// greeted reports whether a connection to addr gets a 220 line.
func greeted(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "220")
}

func (r *backlogRelay) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		r.cmd.Process.Kill()
		<-done
	}
}

func runBacklog(bin, rmin, rmax string, sessions, n int) (backlogRow, error) {
	row := backlogRow{N: n}
	dir, err := os.MkdirTemp("", "tlsrelay-backlog-")
	if err != nil {
		return row, err
	}
	defer os.RemoveAll(dir)
	up := freeLoopback()
	caFile := filepath.Join(dir, "ca.pem")
	down, err := startCounter(up)
	if err != nil {
		return row, err
	}
	// The sink's CA must exist for the relay's ca_file: make it now, start
	// the sink only when the upstream comes back.
	ca, err := certgen.NewCA("tlsrelay-bench CA")
	if err != nil {
		return row, err
	}
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		return row, err
	}
	r, err := startBacklogRelay(bin, dir, up, caFile, rmin, rmax)
	if err != nil {
		down.ln.Close()
		return row, err
	}
	downSince := time.Now()
	res, err := runLoad(loadSpec{To: r.addr, Sessions: sessions, Messages: n, Size: 1024, NewConn: true, Timeout: 30 * time.Minute})
	if err != nil || res.Errors > 0 {
		r.stop()
		down.ln.Close()
		return row, fmt.Errorf("intake: %v (errors %d, first %s)", err, res.Errors, res.FirstError)
	}
	row.Intake = res.MsgsPerSec()
	time.Sleep(5 * time.Second) // let the retries show
	row.RSS = rss(r.cmd.Process.Pid, "VmRSS")
	row.Spool = diskUsage(filepath.Join(dir, "spool"))
	row.List, row.ListRSS, err = timeList(bin, r.cfg, false)
	if err != nil {
		return row, err
	}
	row.ListJSON, _, err = timeList(bin, r.cfg, true)
	if err != nil {
		return row, err
	}

	r.stop()
	if row.Greeting, row.Ready, err = r.start(bin); err != nil {
		return row, err
	}
	time.Sleep(3 * time.Second)
	row.Probes = float64(down.accepted.Load()) / time.Since(downSince).Seconds()
	if fi, err := os.Stat(r.log); err == nil {
		row.LogBytes = fi.Size()
	}

	down.ln.Close()
	leaf, err := ca.Issue(certgen.Options{CommonName: "mx.bench.test", DNSNames: []string{"mx.bench.test"}})
	if err != nil {
		return row, err
	}
	upSink, err := sink.Start(sink.Options{Addr: up, Hostname: "mx.bench.test", Cert: leaf.TLSCertificate(), Discard: true})
	if err != nil {
		return row, err
	}
	defer upSink.Close()
	back := time.Now()
	deadline := back.Add(30 * time.Minute)
	for upSink.Count() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	row.Drain = float64(upSink.Count()) / time.Since(back).Seconds()
	time.Sleep(2 * time.Second) // anything more would be a duplicate
	row.Delivered = upSink.Count()
	r.stop()
	return row, nil
}

// timeList runs `tlsrelay queue list` into /dev/null and returns how long
// it took and its peak RSS.
func timeList(bin, cfg string, asJSON bool) (time.Duration, int64, error) {
	args := []string{"queue", "-config", cfg, "list"}
	if asJSON {
		args = append(args, "-json")
	}
	cmd := exec.Command(bin, args...)
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer null.Close()
	cmd.Stdout = null
	var stderr strings.Builder
	cmd.Stderr = &stderr
	begin := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("queue list: %v: %s", err, stderr.String())
	}
	took := time.Since(begin)
	var peak int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		peak = ru.Maxrss << 10
	}
	return took, peak, nil
}

// diskUsage is the space the files under dir take on disk.
func diskUsage(dir string) int64 {
	var total int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}

func renderBacklog(rows []backlogRow, healthy float64, retry string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "retry_min/retry_max %s; 1 KiB messages, 16 sessions, a new connection per message; healthy rate (empty queue, upstream up; the mean) %.0f msgs/s\n\n", retry, healthy)
	b.WriteString("| queued | intake while down | relay RSS | spool on disk | `queue list` (-json) | list RSS | restart until 220 | until ready | drain | connects/s to the down upstream | log while down | delivered |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %.0f msgs/s (%.0f %%) | %.0f MiB | %.0f MiB (%.1f KiB/msg) | %.2f s (%.2f s) | %.0f MiB | %.2f s | %.2f s | %.0f/s (%.0f %%) | %.2f | %.1f MiB | %d |\n",
			r.N, r.Intake, 100*r.Intake/healthy, mib(r.RSS), mib(r.Spool), float64(r.Spool)/1024/float64(r.N),
			r.List.Seconds(), r.ListJSON.Seconds(), mib(r.ListRSS), r.Greeting.Seconds(), r.Ready.Seconds(),
			r.Drain, 100*r.Drain/healthy, r.Probes, mib(r.LogBytes), r.Delivered)
	}
	if len(rows) > 1 {
		f, l := rows[0], rows[len(rows)-1]
		ratio := func(a, b float64) string {
			if a == 0 {
				return "n/a"
			}
			return fmt.Sprintf("×%.2f", b/a)
		}
		fmt.Fprintf(&b, "| growth %d → %d (×%d) | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | |\n", f.N, l.N, l.N/f.N,
			ratio(f.Intake, l.Intake), ratio(float64(f.RSS), float64(l.RSS)), ratio(float64(f.Spool), float64(l.Spool)),
			ratio(f.List.Seconds(), l.List.Seconds()), ratio(float64(f.ListRSS), float64(l.ListRSS)),
			ratio(f.Greeting.Seconds(), l.Greeting.Seconds()), ratio(f.Ready.Seconds(), l.Ready.Seconds()),
			ratio(f.Drain, l.Drain), ratio(f.Probes, l.Probes), ratio(float64(f.LogBytes), float64(l.LogBytes)))
	}
	return b.String()
}
