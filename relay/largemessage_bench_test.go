package relay

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tlsrelay/relay/config"
	"tlsrelay/relay/sink"
)

// BenchmarkRelayLarge is the large-message path end to end, as in
// production: plain SMTP clients send 1 MiB messages with DATA (dot-stuffed,
// as Postfix's smtp-source does) over 8 sessions, the relay spools each one
// (fsync on), answers 250 and relays it over STARTTLS verified against a
// pinned CA to a go-smtp sink. One op is one message, from the first MAIL
// to the sink having it. "cpu-ms/msg" is this process's CPU per message:
// client, relay and sink together; profile with -cpuprofile to see the
// relay's share.
func BenchmarkRelayLarge(b *testing.B) {
	for _, c := range []struct {
		name     string
		size     int
		sessions int
	}{{"1MiB-8sessions", 1 << 20, 8}, {"10MiB-2sessions", 10 << 20, 2}} {
		b.Run(c.name, func(b *testing.B) { benchRelay(b, c.size, c.sessions, false) })
	}
}

// BenchmarkRelaySmall is the small-message path end to end, as
// BenchmarkRelayLarge is the large one: 1 KiB messages over 1, 16 and 64
// sessions, and over 16 clients that open a new connection for every
// message (as smtp-source does by default, and as most legacy
// applications do). Compare allocs/op and cpu-ms/msg between two builds
// with benchstat: on two shared cores the rate alone is too noisy.
func BenchmarkRelaySmall(b *testing.B) {
	for _, c := range []struct {
		name     string
		sessions int
		newConn  bool
	}{{"1KiB-1session", 1, false}, {"1KiB-16sessions", 16, false}, {"1KiB-16sessions-newconn", 16, true}, {"1KiB-64sessions", 64, false}} {
		b.Run(c.name, func(b *testing.B) { benchRelay(b, 1<<10, c.sessions, c.newConn) })
	}
}

func benchRelay(b *testing.B, size, sessions int, newConn bool) {
	p := newPKI(b, "Bench CA")
	up := startSink(b, sink.Options{Cert: p.leaf(b, "mx.bench.test").TLSCertificate(), Discard: true})
	cfgText := fmt.Sprintf(`
[server]
listen = "127.0.0.1:0"
hostname = "relay.bench.test"
max_message_bytes = 67108864
[queue]
dir = %q
`, b.TempDir()) + destination("bench.test", up.Addr(), p.caFile, "mx.bench.test")
	cfg, err := config.Parse("bench.toml", cfgText)
	if err != nil {
		b.Fatal(err)
	}
	r, err := New(cfg, Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Start(); err != nil {
		b.Fatal(err)
	}
	tr := &testRelay{Relay: r}
	b.Cleanup(tr.stop)

	msg := benchMessage(size)
	b.SetBytes(int64(size))
	send := func(n int) {
		var wg sync.WaitGroup
		errs := make(chan error, sessions)
		for s := 0; s < sessions; s++ {
			count := n / sessions
			if s < n%sessions {
				count++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				perConn := count
				if newConn {
					perConn = 1
				}
				for sent := 0; sent < count; sent += perConn {
					if err := sendBenchSession(tr.Addr().String(), msg, min(perConn, count-sent)); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	send(sessions) // warm up: connections, pools, page cache
	if !up.Wait(sessions, time.Minute) {
		b.Fatalf("the sink counted %d of %d warm-up messages", up.Count(), sessions)
	}
	base := up.Count()
	cpu0 := processCPU()
	b.ReportAllocs()
	b.ResetTimer()
	send(b.N)
	if !up.Wait(base+b.N, 5*time.Minute) {
		b.Fatalf("the sink counted %d of %d messages", up.Count()-base, b.N)
	}
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/msg")
}

// benchMessage is a dot-stuffed message body of about size bytes as
// smtp-source sends it (header, then lines of 77 characters), followed by
// the end of data.
func benchMessage(size int) []byte {
	var m bytes.Buffer
	m.WriteString("From: <bench@load.test>\r\nTo: <sink@bench.test>\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("X", 77) + "\r\n"
	for i := 0; m.Len() < size; i++ {
		if i%100 == 0 {
			m.WriteString(".a line that starts with a dot\r\n")
			continue
		}
		m.WriteString(line)
	}
	m.WriteString(".\r\n")
	return m.Bytes()
}

// sendBenchSession sends n messages over one plain SMTP session, pipelining the
// envelope as smtp-source does, and fails on any reply but the expected.
func sendBenchSession(addr string, msg []byte, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReader(c)
	expect := func(code string) error {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if !strings.HasPrefix(line, code) {
				return fmt.Errorf("want %s, got %q", code, line)
			}
			if len(line) < 4 || line[3] != '-' {
				return nil
			}
		}
	}
	if err := expect("220"); err != nil {
		return err
	}
	io.WriteString(c, "EHLO load.test\r\n")
	if err := expect("250"); err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		io.WriteString(c, "MAIL FROM:<bench@load.test>\r\nRCPT TO:<sink@bench.test>\r\nDATA\r\n")
		for _, code := range []string{"250", "250", "354"} {
			if err := expect(code); err != nil {
				return err
			}
		}
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if err := expect("250"); err != nil {
			return err
		}
	}
	io.WriteString(c, "QUIT\r\n")
	return expect("221")
}

// processCPU is this process's user and system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
