package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestLoadAgainstSink runs a small load straight into the bench sink and
// checks the counts the report rests on.
func TestLoadAgainstSink(t *testing.T) {
	s, err := startBenchSink("127.0.0.1:0", "mx.bench.test", filepath.Join(t.TempDir(), "ca.pem"), false, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, newConn := range []bool{false, true} {
		before := s.Count()
		res, err := runLoad(loadSpec{To: s.Addr(), Sessions: 4, Messages: 40, Size: 2048, NewConn: newConn,
			SinkCount: httpCount("http://" + s.stats + "/count"), Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 40 || res.Errors != 0 || res.Confirmed != 40 || s.Count()-before != 40 {
			t.Fatalf("newConn=%v: %+v, sink count %d", newConn, res, s.Count()-before)
		}
		if res.P50 <= 0 || res.P50 > res.P99 || res.Bytes != 40*int64(len(message(2048))) {
			t.Errorf("newConn=%v: implausible report %+v", newConn, res)
		}
	}
	if len(message(1<<20)) != 1<<20 {
		t.Errorf("message(1 MiB) is %d bytes", len(message(1<<20)))
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	if err := loopbackOnly("192.0.2.1:25"); err == nil {
		t.Error("a non-loopback target was accepted")
	}
	if err := loopbackOnly("127.0.0.1:25", "[::1]:25"); err != nil {
		t.Error(err)
	}
}

// TestSMTPSourceAgainstSink checks the smtp-source driver's counts, where
// Postfix's smtp-source is installed.
func TestSMTPSourceAgainstSink(t *testing.T) {
	bin, err := exec.LookPath("smtp-source")
	if err != nil {
		t.Skip("smtp-source not installed (apt-get install postfix)")
	}
	s, err := startBenchSink("127.0.0.1:0", "mx.bench.test", filepath.Join(t.TempDir(), "ca.pem"), false, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := runSMTPSource(bin, loadSpec{To: s.Addr(), Sessions: 4, Messages: 40, Size: 1024, NewConn: true,
		SinkCount: httpCount("http://" + s.stats + "/count"), Timeout: 30 * time.Second})
	if err != nil || res.FirstError != "" {
		t.Fatal(err, res.FirstError)
	}
	if res.Sent != 40 || res.Confirmed != 40 || s.Count() != 40 || res.EndToEnd <= 0 {
		t.Fatalf("%+v, sink count %d", res, s.Count())
	}
}

func TestCPUTime(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before, ruBefore := cpuTime(os.Getpid()), rusage()
	// Spin until the kernel's own account says 200 ms of CPU were used
	// (however long that takes on a loaded machine), then compare what
	// /proc/PID/stat says: the point is its parsing, not the clock.
	for deadline := time.Now().Add(20 * time.Second); rusage()-ruBefore < 200*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Skip("could not get 200 ms of CPU in 20 s")
		}
	}
	used, want := cpuTime(os.Getpid())-before, rusage()-ruBefore
	// /proc counts in clock ticks (10 ms): allow for them.
	if used < want/2 || used > want*2+50*time.Millisecond {
		t.Fatalf("/proc/PID/stat says %v of CPU where getrusage says %v", used, want)
	}
}
