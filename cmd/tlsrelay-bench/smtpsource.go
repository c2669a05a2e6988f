package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// runSMTPSource drives the load with Postfix's smtp-source, the load tool
// the performance targets were first measured with: a C client that costs
// the shared CPUs less than this tool's Go client. It reports no
// per-message latency; the end-to-end rate is taken as runLoad takes it.
func runSMTPSource(bin string, spec loadSpec) (loadResult, error) {
	var res loadResult
	if err := loopbackOnly(spec.To); err != nil {
		return res, err
	}
	before, err := spec.sinkCountNow()
	if err != nil {
		return res, err
	}
	args := []string{"-s", strconv.Itoa(spec.Sessions), "-m", strconv.Itoa(spec.Messages), "-l", strconv.Itoa(spec.Size),
		"-f", "bench@load.test", "-t", "sink@bench.test", "-M", "load.test"}
	if !spec.NewConn {
		args = append(args, "-d")
	}
	start := time.Now()
	out, err := exec.Command(bin, append(args, spec.To)...).CombinedOutput()
	res.Submit = time.Since(start)
	if err != nil {
		res.Errors = 1
		res.FirstError = fmt.Sprintf("smtp-source: %v: %s", err, strings.TrimSpace(string(out)))
		return res, nil
	}
	res.Sent = spec.Messages
	res.Bytes = int64(spec.Messages) * int64(spec.Size)
	if err := res.awaitSink(spec, before, start); err != nil {
		return res, err
	}
	return res, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// cpuTime reads the user and system CPU time a process has used.
func cpuTime(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: count fields
	// from after it. utime and stime are fields 14 and 15 of the line.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	user, _ := strconv.ParseInt(f[11], 10, 64)
	sys, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(user+sys) * time.Second / clockTicks
}
