package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/drop"
	"tlsrelay/relay/sink"
)

// cutProxy forwards SMTP sessions to addr, except that the first time the
// relay answers the end of the data with its 250, it closes the client's
// connection instead of passing the reply on: the relay took the message
// and the client does not know.
func cutProxy(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var cut atomic.Bool
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer s.Close()
				go io.Copy(s, c)
				br := bufio.NewReader(s)
				inData := false // after the 354, the next reply is the data's
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "354") {
						inData = true
					} else if inData && strings.HasPrefix(line, "250 ") && cut.CompareAndSwap(false, true) {
						return
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestDropImportBrokenAfterThe250SendsOnce: the importer's connection
// breaks after the relay took the message and answered 250; at its next
// pass the importer asks the relay and does not submit the message again,
// whether the relay still holds it (its upstream defers), has delivered
// and removed it, or delivered it in reject mode. Each recipient gets
// exactly one copy.
func TestDropImportBrokenAfterThe250SendsOnce(t *testing.T) {
	p := newPKI(t, "Test CA")
	var hold atomic.Bool
	up := startSink(t, sink.Options{Cert: p.leaf(t, "mx.example.test").TLSCertificate(), RefuseData: func() *smtp.SMTPError {
		if hold.Load() {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		}
		return nil
	}})
	tr := startRelay(t, baseConfig(t.TempDir())+
		destination("queued.test", up.Addr(), p.caFile, "mx.example.test")+
		destination("reject.test", up.Addr(), p.caFile, "mx.example.test", `on_failure = "reject"`))
	var mu sync.Mutex
	count := func(rcpt string) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, m := range up.Messages() {
			for _, to := range m.To {
				if to == rcpt {
					n++
				}
			}
		}
		return n
	}
	for _, c := range []struct {
		name, rcpt string
		held       bool // the upstream defers until after the second pass
	}{
		{"delivered and removed", "a@queued.test", false},
		{"still queued", "b@queued.test", true},
		{"reject mode", "c@reject.test", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "drop")
			if err := drop.PrepareDir(dir); err != nil {
				t.Fatal(err)
			}
			im := &drop.Importer{Dir: dir, Addr: cutProxy(t, tr.Addr().String()), Interval: time.Second, MaxAge: time.Hour,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Queued: tr.DropTaken}
			if _, err := drop.Write(dir, drop.Envelope{From: "app@sender.test", Recipients: []string{c.rcpt}}, []byte(testBody)); err != nil {
				t.Fatal(err)
			}
			hold.Store(c.held)
			var te *drop.TemporaryError
			if err := im.Once(context.Background()); !errors.As(err, &te) || te.Stage != "end of data" {
				t.Fatalf("first pass: %v, want the session broken at the end of data", err)
			}
			if c.held {
				eventually(t, 5*time.Second, "a deferred attempt", func() bool { return strings.Contains(tr.logs.String(), "451") })
			} else {
				eventually(t, 5*time.Second, "the delivery", func() bool { return count(c.rcpt) == 1 && tr.QueueSize() == 0 })
			}
			if err := im.Once(context.Background()); err != nil {
				t.Fatalf("second pass: %v", err)
			}
			if left, _ := os.ReadDir(filepath.Join(dir, "importing")); len(left) != 0 {
				t.Errorf("importing/ still holds %d files", len(left))
			}
			hold.Store(false)
			// Had the message been submitted again, it would be queued now
			// and delivered before the queue empties.
			eventually(t, 5*time.Second, "the queue empty", func() bool { return tr.QueueSize() == 0 && count(c.rcpt) >= 1 })
			if n := count(c.rcpt); n != 1 {
				t.Errorf("%s got %d copies, want 1", c.rcpt, n)
			}
		})
	}
}
