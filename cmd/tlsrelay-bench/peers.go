package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The peers tlsrelay is compared with, each started by its script in
// ../shared/bench and configured as the equivalent relay: plain SMTP in,
// a durable queue, verified TLS out to the sink.

// startPostfix starts a throwaway Postfix in dir. Its CPU is that of all
// its processes: the master and every process it started, those that
// have exited included (the master reaps them, so their time is in its
// children's times).
func startPostfix(script, dir string, sink *benchSink, name string) (target, func(), error) {
	addr := freeLoopback()
	out, err := exec.Command("bash", script, "start", dir, addr, sink.Addr(), sink.caFile, name, "starttls").CombinedOutput()
	if err != nil {
		return target{}, nil, fmt.Errorf("%v\n%s", err, out)
	}
	stop := func() { exec.Command("bash", script, "stop", dir).Run() }
	// Postfix refuses messages over 10 MB by default; tlsrelay and maddy
	// are given 64 MiB, and so is Postfix.
	conf := filepath.Join(dir, "conf")
	if out, err := exec.Command("postconf", "-c", conf, "-e", "message_size_limit=67108864").CombinedOutput(); err != nil {
		stop()
		return target{}, nil, fmt.Errorf("postconf: %v\n%s", err, out)
	}
	if out, err := exec.Command("postfix", "-c", conf, "reload").CombinedOutput(); err != nil {
		stop()
		return target{}, nil, fmt.Errorf("postfix reload: %v\n%s", err, out)
	}
	time.Sleep(time.Second) // the master restarts its services
	raw, err := os.ReadFile(filepath.Join(dir, "queue", "pid", "master.pid"))
	master, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || master == 0 {
		stop()
		return target{}, nil, fmt.Errorf("no master pid: %v", err)
	}
	return target{Name: "postfix", Addr: addr, CPU: func() time.Duration { return treeCPU(master) }}, stop, nil
}

// startMaddy starts a throwaway maddy. Its directory is under one that
// stays (os.TempDir()/tlsrelay-bench-maddy), where the script keeps the
// maddy binary it builds once.
func startMaddy(script string, sink *benchSink) (target, func(), error) {
	parent := filepath.Join(os.TempDir(), "tlsrelay-bench-maddy")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return target{}, nil, err
	}
	dir, err := os.MkdirTemp(parent, "run-")
	if err != nil {
		return target{}, nil, err
	}
	addr := freeLoopback()
	out, err := exec.Command("bash", script, "start", dir, addr, sink.Addr(), sink.caFile).CombinedOutput()
	stop := func() {
		exec.Command("bash", script, "stop", dir).Run()
		time.Sleep(200 * time.Millisecond)
		os.RemoveAll(dir)
	}
	if err != nil {
		stop()
		return target{}, nil, fmt.Errorf("%v\n%s", err, out)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "maddy.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid == 0 {
		stop()
		return target{}, nil, fmt.Errorf("no maddy pid: %v", err)
	}
	return target{Name: "maddy", Addr: addr, CPU: func() time.Duration { return treeCPU(pid) }}, stop, nil
}

// treeCPU is the CPU time (user and system) of process pid and all its
// descendants, living or reaped.
func treeCPU(pid int) time.Duration {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(p); len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], p)
		}
	}
	var total time.Duration
	var walk func(p int)
	walk = func(p int) {
		if f := statFields(p); len(f) >= 15 {
			for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
				v, _ := strconv.ParseInt(f[i], 10, 64)
				total += time.Duration(v) * time.Second / clockTicks
			}
		}
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return total
}

// statFields are the fields of /proc/PID/stat after the command name:
// [0] is the state, [1] the parent's pid, [11] and [12] utime and stime,
// [13] and [14] the reaped children's.
func statFields(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(raw)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}
