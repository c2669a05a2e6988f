package main

import (
	"bufio"
	"flag"
	"fmt"

	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

type benchCase struct {
	Name     string
	Size     int
	Sessions int
	Messages int
	NewConn  bool // a new connection per message, as smtp-source without -d
	// SMTPSource runs Postfix's smtp-source as the load generator instead
	// of this tool's own (the reference load; skipped if absent).
	SMTPSource bool
}

var cases = []benchCase{
	{"1 KiB, 1 session", 1 << 10, 1, 2000, false, false},
	{"1 KiB, 16 sessions", 1 << 10, 16, 10000, false, false},
	{"1 KiB, 16 sessions, new conn/msg", 1 << 10, 16, 10000, true, false},
	{"1 KiB, 16 sessions, new conn/msg, smtp-source", 1 << 10, 16, 10000, true, true},
	{"1 KiB, 64 sessions", 1 << 10, 64, 10000, false, false},
	{"1 MiB, 8 sessions", 1 << 20, 8, 200, false, false},
	{"1 MiB, 8 sessions, smtp-source", 1 << 20, 8, 200, false, true},
	{"10 MiB, 2 sessions, smtp-source", 10 << 20, 2, 20, false, true},
	{"50 MiB, 1 message", 50 << 20, 1, 1, false, false},
}

// target is one SMTP server in front of the sink (or the sink itself).
type target struct {
	Name string
	Addr string
	PID  int // for RSS; 0 when not measured
	// CPU returns the CPU time the system has used so far, all its
	// processes together; nil when not measured (the sink alone).
	CPU func() time.Duration
}

type row struct {
	Case    benchCase
	Target  string
	Res     loadResult
	RSSGrow int64 // peak RSS growth in bytes during the case (tlsrelay only)
	// CPUPerMsg is the system's CPU time (user+system, all its
	// processes) per message.
	CPUPerMsg time.Duration
	// SinkCPUPerMsg is this process's CPU time per message: the sink's
	// when smtp-source generates the load (else it includes the
	// generator and is not shown).
	SinkCPUPerMsg time.Duration
}

func cmdCompare(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	relayBin := fs.String("relay", "", "path of a built tlsrelay binary (go build -o /tmp/tlsrelay ./cmd/tlsrelay)")
	postfix := fs.String("postfix", "", "path of postfix-relay.sh (../shared/bench/postfix-relay.sh); empty: no Postfix")
	maddy := fs.String("maddy", "", "path of maddy-relay.sh (../shared/bench/maddy-relay.sh); empty: no maddy")
	quick := fs.Bool("quick", false, "a fifth of the messages, for a smoke run")
	rounds := fs.Int("rounds", 1, "run each case this many times per system and keep the fastest round")
	only := fs.String("cases", "", "run only the cases whose name contains this text")
	markdown := fs.String("markdown", "", "also write the result table to this file")
	fs.Parse(args)
	if *relayBin == "" {
		return fmt.Errorf("-relay is required")
	}
	dir, err := os.MkdirTemp("", "tlsrelay-bench-")
	if err != nil {
		return err
	}
	var cl cleanups
	defer cl.run()
	cl.onSignal()
	cl.add(func() { os.RemoveAll(dir) })
	// Postfix's processes run as the postfix user: they must be able to
	// reach the directory and read the (public) CA certificate.
	os.Chmod(dir, 0o755)

	const name = "mx.bench.test"
	sink, err := startBenchSink("127.0.0.1:0", name, filepath.Join(dir, "ca.pem"), false, "")
	if err != nil {
		return err
	}
	os.Chmod(sink.caFile, 0o644)
	cl.add(func() { sink.Close() })
	count := func() (int, error) { return sink.Count(), nil }

	relayAddr := freeLoopback()
	relay, err := startRelay(*relayBin, dir, relayAddr, sink.Addr(), sink.caFile, name)
	if err != nil {
		return err
	}
	cl.add(func() { relay.Process.Kill(); relay.Wait() })

	relayPID := relay.Process.Pid
	targets := []target{{Name: "sink alone", Addr: sink.Addr()},
		{Name: "tlsrelay", Addr: relayAddr, PID: relayPID, CPU: func() time.Duration { return cpuTime(relayPID) }}}
	if *postfix != "" {
		if t, stop, err := startPostfix(*postfix, filepath.Join(dir, "postfix"), sink, name); err != nil {
			fmt.Fprintf(os.Stderr, "Postfix did not start, comparing without it: %v\n", err)
		} else {
			cl.add(stop)
			targets = append(targets, t)
		}
	}
	if *maddy != "" {
		if t, stop, err := startMaddy(*maddy, sink); err != nil {
			fmt.Fprintf(os.Stderr, "maddy did not start, comparing without it: %v\n", err)
		} else {
			cl.add(stop)
			targets = append(targets, t)
		}
	}

	started := time.Now().UTC()
	loadBefore := loadAverage()
	fmt.Printf("machine: %s/%s, %d CPUs, %s; %s; load average at the start %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), started.Format("2006-01-02 15:04 UTC"), loadBefore)
	var rows []row
	smtpSource, _ := exec.LookPath("smtp-source")
	for _, c := range cases {
		if *quick {
			c.Messages = max(1, c.Messages/5)
		}
		if *only != "" && !strings.Contains(c.Name, *only) {
			continue
		}
		if c.SMTPSource && smtpSource == "" {
			fmt.Printf("  %-34s skipped: smtp-source is not installed (apt-get install postfix)\n", c.Name)
			continue
		}
		load := runLoad
		if c.SMTPSource {
			load = func(spec loadSpec) (loadResult, error) { return runSMTPSource(smtpSource, spec) }
		}
		for _, t := range targets {
			// A short warm-up: connections, pools, page cache.
			if c.Size <= 1<<20 {
				load(loadSpec{To: t.Addr, Sessions: c.Sessions, Messages: max(c.Sessions, c.Messages/20), Size: c.Size, NewConn: c.NewConn, SinkCount: count, Timeout: time.Minute})
			}
			var best *row
			for round := 0; round < max(1, *rounds); round++ {
				r, err := measure(load, t, c, count)
				if err != nil {
					return err
				}
				fmt.Printf("  %-40s %-11s %8.0f msgs/s %8.2f MB/s  p50 %-9v p99 %-9v CPU/msg %-9v confirmed %d/%d errors %d\n", c.Name, t.Name,
					r.Res.MsgsPerSec(), r.Res.MBPerSec(), r.Res.P50.Round(10*time.Microsecond), r.Res.P99.Round(10*time.Microsecond),
					r.CPUPerMsg.Round(10*time.Microsecond), r.Res.Confirmed, r.Res.Sent, r.Res.Errors)
				if r.Res.FirstError != "" {
					fmt.Printf("    first error: %s\n", r.Res.FirstError)
				}
				if best == nil || r.Res.MsgsPerSec() > best.Res.MsgsPerSec() {
					best = &r
				}
			}
			rows = append(rows, *best)
		}
	}
	idle, idleErr := idleSessions(relayAddr, relay.Process.Pid, 1000)

	table := fmt.Sprintf("%s, %d CPUs, %s; %s; load average (1, 5, 15 min) %s at the start, %s at the end; best of %d round(s)\n\n",
		runtime.GOARCH, runtime.NumCPU(), runtime.Version(), started.Format("2006-01-02 15:04 UTC"), loadBefore, loadAverage(), max(1, *rounds))
	table += renderTable(rows, targets)
	fmt.Println()
	fmt.Print(table)
	if idleErr != nil {
		fmt.Printf("\n1,000 idle sessions: %v\n", idleErr)
	} else {
		fmt.Printf("\n1,000 idle inbound sessions: tlsrelay RSS %.1f MiB\n", float64(idle)/(1<<20))
		table += fmt.Sprintf("\n1,000 idle inbound sessions: tlsrelay RSS %.1f MiB\n", float64(idle)/(1<<20))
	}
	if *markdown != "" {
		return os.WriteFile(*markdown, []byte(table), 0o644)
	}
	return nil
}

// cleanups stops what the comparison started, in reverse order, at its
// end or when it is interrupted (SIGINT, SIGTERM): no relay, Postfix or
// maddy is left running.
type cleanups struct {
	mu  sync.Mutex
	fns []func()
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, f)
}

func (c *cleanups) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

func (c *cleanups) onSignal() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "tlsrelay-bench: interrupted; stopping the relay and the peers")
		c.run()
		os.Exit(130)
	}()
}

// measure runs one round of case c against t.
func measure(load func(loadSpec) (loadResult, error), t target, c benchCase, count func() (int, error)) (row, error) {
	var before int64
	var cpuBefore time.Duration
	selfBefore := cpuTime(os.Getpid())
	if t.PID != 0 {
		resetPeakRSS(t.PID)
		before = rss(t.PID, "VmRSS")
	}
	if t.CPU != nil {
		cpuBefore = t.CPU()
	}
	res, err := load(loadSpec{To: t.Addr, Sessions: c.Sessions, Messages: c.Messages, Size: c.Size, NewConn: c.NewConn, SinkCount: count, Timeout: 10 * time.Minute})
	if err != nil {
		return row{}, err
	}
	r := row{Case: c, Target: t.Name, Res: res}
	if res.Sent > 0 {
		r.SinkCPUPerMsg = (cpuTime(os.Getpid()) - selfBefore) / time.Duration(res.Sent)
		if t.CPU != nil {
			r.CPUPerMsg = (t.CPU() - cpuBefore) / time.Duration(res.Sent)
		}
	}
	if t.PID != 0 {
		r.RSSGrow = rss(t.PID, "VmHWM") - before
	}
	return r, nil
}

func renderTable(rows []row, targets []target) string {
	var b strings.Builder
	b.WriteString("| case | target | msgs/s (end to end) | MB/s | submit p50 | p90 | p99 | confirmed | vs sink alone | vs postfix | vs maddy | peak RSS growth | CPU/msg | sink CPU/msg |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	rate := map[string]float64{}
	for _, r := range rows {
		if r.Res.Confirmed == r.Res.Sent && r.Res.Sent > 0 {
			rate[r.Case.Name+"/"+r.Target] = r.Res.MsgsPerSec()
		}
	}
	for _, r := range rows {
		vsLimit, vsPostfix, vsMaddy, grow, cpu, sinkCPU := "", "", "", "", "", ""
		if l := rate[r.Case.Name+"/sink alone"]; r.Target != "sink alone" && l > 0 {
			vsLimit = fmt.Sprintf("%.0f%%", 100*r.Res.MsgsPerSec()/l)
		}
		if r.Target == "tlsrelay" {
			if p := rate[r.Case.Name+"/postfix"]; p > 0 {
				vsPostfix = fmt.Sprintf("%.1f×", r.Res.MsgsPerSec()/p)
			}
			if m := rate[r.Case.Name+"/maddy"]; m > 0 {
				vsMaddy = fmt.Sprintf("%.1f×", r.Res.MsgsPerSec()/m)
			}
			grow = fmt.Sprintf("%.1f MiB", float64(max(r.RSSGrow, 0))/(1<<20))
		}
		if r.CPUPerMsg > 0 {
			cpu = r.CPUPerMsg.Round(10 * time.Microsecond).String()
		}
		if r.Res.Sent == 0 && r.Res.FirstError != "" {
			fmt.Fprintf(&b, "| %s | %s | refused: %s | | | | | | | | | | | |\n", r.Case.Name, r.Target, r.Res.FirstError)
			continue
		}
		p50, p90, p99 := "n/a", "n/a", "n/a" // smtp-source does not time messages
		if r.Case.SMTPSource {
			sinkCPU = r.SinkCPUPerMsg.Round(10 * time.Microsecond).String()
		} else {
			p50, p90, p99 = r.Res.P50.Round(10*time.Microsecond).String(), r.Res.P90.Round(10*time.Microsecond).String(), r.Res.P99.Round(10*time.Microsecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.2f | %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s |\n", r.Case.Name, r.Target,
			r.Res.MsgsPerSec(), r.Res.MBPerSec(), p50, p90, p99, r.Res.Confirmed, r.Res.Sent, vsLimit, vsPostfix, vsMaddy, grow, cpu, sinkCPU)
	}
	return b.String()
}

// loadAverage is the machine's load average over 1, 5 and 15 minutes.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

const relayConfig = `
[server]
listen = %q
hostname = "relay.bench.test"
max_message_bytes = 67108864
max_connections = 5000
max_connections_per_ip = 5000
[queue]
dir = %q
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

func startRelay(bin, dir, listen, upstream, caFile, name string) (*exec.Cmd, error) {
	cfg := filepath.Join(dir, "tlsrelay.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(relayConfig, listen, filepath.Join(dir, "spool"), upstream, caFile, name, name)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "-config", cfg)
	log, err := os.Create(filepath.Join(os.TempDir(), "tlsrelay-bench-relay.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", listen); err == nil {
			c.Close()
			return cmd, nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	cmd.Process.Kill()
	return nil, fmt.Errorf("tlsrelay did not start; see %s", log.Name())
}

func freeLoopback() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// rss reads a memory figure of a process, in bytes (VmRSS: now; VmHWM: peak).
func rss(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// resetPeakRSS makes VmHWM start again from the current RSS.
func resetPeakRSS(pid int) {
	os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// idleSessions opens n sessions that said EHLO and then wait, and returns
// the relay's RSS with them open.
func idleSessions(addr string, pid, n int) (int64, error) {
	var clients []*smtp.Client
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c, err := smtp.Dial(addr)
		if err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
		clients = append(clients, c)
		if err := c.Hello("idle.test"); err != nil {
			return 0, fmt.Errorf("session %d: %w", i, err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	return rss(pid, "VmRSS"), nil
}
