package main

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tlsrelay/relay/sink"
)

// TestKill9UnderLoadLosesNothing is the promise "nothing answered 250 is
// ever lost" under fire: clients submit continuously (small messages for
// the journal, large ones for files of their own) while the relay is
// killed with SIGKILL at random moments and restarted on the same spool,
// and the upstream goes away for a while in the middle, so kills also land
// while messages are deferred, spilled out of the journal and retried.
// Every message a client saw answered 250 must reach the upstream;
// duplicates are allowed (delivery is at least once), loss is not.
func TestKill9UnderLoadLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds of load and kills")
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	t.Logf("kill timing seed %d", seed)

	fx := newUpstreamFixture(t)
	upAddr := freeAddr(t)
	cfg := writeConfig(t, t.TempDir(), upAddr, fx.caFile)
	var ups []*sink.Sink // every incarnation of the upstream
	startUpstream := func() {
		up, err := sink.Start(sink.Options{Addr: upAddr, Cert: fx.leaf.TLSCertificate()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { up.Close() })
		ups = append(ups, up)
	}
	startUpstream()

	p := startBinary(t, cfg)
	var relayAddr atomic.Value
	relayAddr.Store(p.addr)

	// Clients: each message carries a unique id in its subject; it counts
	// as accepted only once the relay answered 250 to its DATA.
	var (
		mu       sync.Mutex
		accepted = map[string]bool{}
		failed   atomic.Int64
		stop     atomic.Bool
		clients  sync.WaitGroup
	)
	large := strings.Repeat(strings.Repeat("y", 78)+"\r\n", 1000) // 80 KB: a file of its own
	for c := 0; c < 4; c++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for n := 0; !stop.Load(); n++ {
				id := fmt.Sprintf("c%d-%d", c, n)
				body := "Subject: " + id + "\r\n\r\nsmall\r\n"
				if n%8 == 0 {
					body = "Subject: " + id + "\r\n\r\n" + large
				}
				if err := plainSend(relayAddr.Load().(string), fmt.Sprintf("u%d@e2e.test", c), body); err != nil {
					failed.Add(1) // the relay was down or died mid-way: not accepted
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				accepted[id] = true
				mu.Unlock()
			}
		}()
	}

	const kills = 6
	for i := 1; i <= kills; i++ {
		time.Sleep(time.Duration(150+rng.IntN(450)) * time.Millisecond)
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		switch i {
		case 2:
			ups[len(ups)-1].Close() // the upstream goes away: messages are deferred
		case 4:
			startUpstream()
		}
		p = startBinary(t, cfg)
		relayAddr.Store(p.addr)
	}
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	clients.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(accepted) < 50 {
		t.Fatalf("only %d messages were accepted (%d submissions failed): the load did not run", len(accepted), failed.Load())
	}
	missing := func() []string {
		got := map[string]int{}
		for _, up := range ups {
			for _, m := range up.Messages() {
				subject, _, _ := strings.Cut(strings.TrimPrefix(string(m.Data), "Subject: "), "\r\n")
				got[subject]++
			}
		}
		var out []string
		for id := range accepted {
			if got[id] == 0 {
				out = append(out, id)
			}
		}
		return out
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if m := missing(); len(m) > 0 {
		if len(m) > 10 {
			m = m[:10]
		}
		t.Fatalf("%d messages answered 250 never reached the upstream after %d kills, e.g. %v", len(missing()), kills, m)
	}
	delivered := 0
	for _, up := range ups {
		delivered += up.Count()
	}
	t.Logf("%d messages accepted across %d SIGKILLs and an upstream outage, all delivered (%d deliveries: duplicates are the at-least-once window; %d submissions cut off by a kill)",
		len(accepted), kills, delivered, failed.Load())
}
