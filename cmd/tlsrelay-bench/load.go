package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// loadSpec is one load run.
type loadSpec struct {
	To       string
	Sessions int
	Messages int
	Size     int
	NewConn  bool
	// SinkCount, if set, reads the sink's received count, to measure the
	// end-to-end rate: until the sink has every message.
	SinkCount func() (int, error)
	Timeout   time.Duration
}

// loadResult is what a run measured.
type loadResult struct {
	Sent       int           `json:"sent"`
	Errors     int           `json:"errors"`
	FirstError string        `json:"first_error,omitempty"`
	Submit     time.Duration `json:"submit_ns"`     // first MAIL to last 250
	EndToEnd   time.Duration `json:"end_to_end_ns"` // first MAIL until the sink had them all
	Confirmed  int           `json:"confirmed"`     // messages the sink confirmed
	P50        time.Duration `json:"p50_ns"`
	P90        time.Duration `json:"p90_ns"`
	P99        time.Duration `json:"p99_ns"`
	Bytes      int64         `json:"bytes"`
}

// MsgsPerSec is the end-to-end rate when known, else the submit rate.
func (r loadResult) MsgsPerSec() float64 {
	d := r.Submit
	if r.EndToEnd > 0 {
		d = r.EndToEnd
	}
	return float64(r.Sent) / d.Seconds()
}

// MBPerSec is the matching byte rate.
func (r loadResult) MBPerSec() float64 {
	d := r.Submit
	if r.EndToEnd > 0 {
		d = r.EndToEnd
	}
	return float64(r.Bytes) / d.Seconds() / (1 << 20)
}

// message builds a message of about size bytes: headers, then lines of 76
// characters, CRLF throughout, as mail looks on the wire.
func message(size int) []byte {
	var b strings.Builder
	b.WriteString("From: bench@load.test\r\nTo: sink@bench.test\r\nSubject: tlsrelay-bench\r\nMessage-ID: <bench@load.test>\r\n\r\n")
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz0123456789", 3)[:76] + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	for b.Len() < size-2 {
		b.WriteByte('x')
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// sinkCountNow is the sink's count before a run (0 without a sink count).
func (spec loadSpec) sinkCountNow() (int, error) {
	if spec.SinkCount == nil {
		return 0, nil
	}
	return spec.SinkCount()
}

// awaitSink waits until the sink has counted every message sent (or the
// spec's timeout passes) and records the end-to-end time from start.
func (res *loadResult) awaitSink(spec loadSpec, before int, start time.Time) error {
	if spec.SinkCount == nil {
		return nil
	}
	deadline := time.Now().Add(spec.Timeout)
	for {
		n, err := spec.SinkCount()
		if err != nil {
			return err
		}
		res.Confirmed = n - before
		if res.Confirmed >= res.Sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	res.EndToEnd = time.Since(start)
	return nil
}

func runLoad(spec loadSpec) (loadResult, error) {
	var res loadResult
	body := message(spec.Size)
	before, err := spec.sinkCountNow()
	if err != nil {
		return res, err
	}
	var next atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for s := 0; s < spec.Sessions; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *smtp.Client
			mine := make([]time.Duration, 0, spec.Messages/spec.Sessions+1)
			fail := func(err error) {
				mu.Lock()
				res.Errors++
				if res.FirstError == "" {
					res.FirstError = err.Error()
				}
				mu.Unlock()
				if c != nil {
					c.Close()
					c = nil
				}
			}
			for next.Add(1) <= int64(spec.Messages) {
				if c == nil {
					var err error
					if c, err = smtp.Dial(spec.To); err != nil {
						fail(err)
						continue
					}
					if err := c.Hello("load.test"); err != nil {
						fail(err)
						continue
					}
				}
				d, err := sendOne(c, body)
				if err != nil {
					fail(err)
					continue
				}
				mine = append(mine, d)
				if spec.NewConn {
					c.Quit()
					c.Close()
					c = nil
				}
			}
			if c != nil {
				c.Quit()
				c.Close()
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Submit = time.Since(start)
	res.Sent = len(lat)
	res.Bytes = int64(len(lat)) * int64(len(body))
	if err := res.awaitSink(spec, before, start); err != nil {
		return res, err
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	res.P50, res.P90, res.P99 = pct(.50), pct(.90), pct(.99)
	return res, nil
}

// sendOne sends one message and returns the time from the end of DATA
// to the server's 250.
func sendOne(c *smtp.Client, body []byte) (time.Duration, error) {
	if err := c.Mail("bench@load.test", nil); err != nil {
		return 0, err
	}
	if err := c.Rcpt("sink@bench.test", nil); err != nil {
		return 0, err
	}
	w, err := c.Data()
	if err != nil {
		return 0, err
	}
	if _, err := w.Write(body); err != nil {
		return 0, err
	}
	t := time.Now()
	if err := w.Close(); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

func httpCount(url string) func() (int, error) {
	return func() (int, error) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strconv.Atoi(strings.TrimSpace(string(b)))
	}
}

func cmdLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	to := fs.String("to", "127.0.0.1:2525", "the SMTP server to load (plain SMTP)")
	sessions := fs.Int("sessions", 16, "concurrent sessions")
	messages := fs.Int("messages", 5000, "messages in all")
	size := fs.Int("size", 1024, "message size in bytes")
	newConn := fs.Bool("new-conn", false, "a new connection per message")
	sinkStats := fs.String("sink-stats", "", "the sink's count URL, e.g. http://127.0.0.1:10588/count")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Parse(args)
	if err := loopbackOnly(*to); err != nil {
		return err
	}
	spec := loadSpec{To: *to, Sessions: *sessions, Messages: *messages, Size: *size, NewConn: *newConn, Timeout: 5 * time.Minute}
	if *sinkStats != "" {
		spec.SinkCount = httpCount(*sinkStats)
	}
	res, err := runLoad(spec)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	fmt.Printf("sent %d (errors %d) in %v: %.0f msgs/s, %.2f MB/s; submit latency p50 %v p90 %v p99 %v",
		res.Sent, res.Errors, res.Submit.Round(time.Millisecond), float64(res.Sent)/res.Submit.Seconds(),
		float64(res.Bytes)/res.Submit.Seconds()/(1<<20), res.P50, res.P90, res.P99)
	if spec.SinkCount != nil {
		fmt.Printf("; sink confirmed %d, end to end %v = %.0f msgs/s", res.Confirmed, res.EndToEnd.Round(time.Millisecond), res.MsgsPerSec())
	}
	fmt.Println()
	if res.FirstError != "" {
		fmt.Println("first error:", res.FirstError)
	}
	return nil
}
