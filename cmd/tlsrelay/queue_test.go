package main

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay"
	"tlsrelay/relay/sink"
	"tlsrelay/relay/spool"
)

// queueFixture is a running relay binary whose example.test upstream is
// down (so mail waits in the queue) and whose sender.test upstream is up
// (so bounces arrive).
type queueFixture struct {
	t        *testing.T
	cfg      string
	proc     *proc
	fx       *upstreamFixture
	upAddr   string
	senderMX *sink.Sink
}

func newQueueFixture(t *testing.T) *queueFixture {
	return newQueueFixtureWith(t, newUpstreamFixture(t))
}

// newQueueFixtureWith is newQueueFixture with the certificates of fx and
// more destinations.
func newQueueFixtureWith(t *testing.T, fx *upstreamFixture, more ...e2eDest) *queueFixture {
	senderMX, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { senderMX.Close() })
	upAddr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "tlsrelay.toml")
	writeConfigFile(t, path, e2eConfig(t.TempDir(), fx.caFile, "",
		append([]e2eDest{{"e2e.test", upAddr, ""}, {"sender.test", senderMX.Addr(), ""}}, more...)...))
	return &queueFixture{t: t, cfg: path, fx: fx, upAddr: upAddr, senderMX: senderMX, proc: startBinary(t, path)}
}

func (q *queueFixture) queue(args ...string) (string, int) {
	cmd := exec.Command(binary, append([]string{"queue", "-config", q.cfg}, args...)...)
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

func (q *queueFixture) list() []relay.QueueEntry {
	q.t.Helper()
	out, code := q.queue("list", "-json")
	var entries []relay.QueueEntry
	if code != 0 || json.Unmarshal([]byte(out), &entries) != nil {
		q.t.Fatalf("queue list -json: exit %d\n%s", code, out)
	}
	return entries
}

func (q *queueFixture) submit(to, subject string) string {
	q.t.Helper()
	if err := plainSendFrom(q.proc.addr, "app@sender.test", to, "Subject: "+subject+"\r\n\r\nsecret body text\r\n"); err != nil {
		q.t.Fatal(err)
	}
	var id string
	eventually(q.t, func() bool {
		for _, e := range q.list() {
			if len(e.Pending) == 1 && e.Pending[0] == to && e.Attempts > 0 {
				id = e.ID
				return true
			}
		}
		return false
	})
	return id
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("condition not met within 15s")
}

func TestQueueCommandsAgainstARunningRelay(t *testing.T) {
	q := newQueueFixture(t)
	held := q.submit("held@e2e.test", "to hold")
	deleted := q.submit("deleted@e2e.test", "to delete")
	bounced := q.submit("bounced@e2e.test", "to bounce")

	out, code := q.queue("list")
	if code != 0 || !strings.Contains(out, held) || !strings.Contains(out, "connect") || !strings.Contains(out, "in 3 messages, 3 recipients pending.") {
		t.Fatalf("queue list: exit %d\n%s", code, out)
	}
	out, code = q.queue("show", held)
	if code != 0 || !strings.Contains(out, "Subject: to hold") || !strings.Contains(out, "pending   held@e2e.test") ||
		!strings.Contains(out, "connect: cannot connect") || strings.Contains(out, "secret body text") {
		t.Fatalf("queue show: exit %d\n%s", code, out)
	}
	if out, _ = q.queue("show", "-body", held); !strings.Contains(out, "secret body text") {
		t.Fatalf("queue show -body lacks the body:\n%s", out)
	}

	if out, code = q.queue("hold", held); code != 0 {
		t.Fatalf("hold: %d %s", code, out)
	}
	if out, code = q.queue("delete", deleted); code != 0 {
		t.Fatalf("delete: %d %s", code, out)
	}
	if out, code = q.queue("bounce", bounced); code != 0 {
		t.Fatalf("bounce: %d %s", code, out)
	}
	if !q.senderMX.Wait(1, 10*time.Second) {
		t.Fatal("no DSN after queue bounce")
	}
	if dsn := string(q.senderMX.Messages()[0].Data); !strings.Contains(dsn, "bounced@e2e.test") || !strings.Contains(dsn, "operator") {
		t.Errorf("DSN does not explain the operator's bounce:\n%s", dsn)
	}
	entries := q.list()
	if len(entries) != 1 || entries[0].ID != held || !entries[0].Held {
		t.Fatalf("after hold/delete/bounce the queue is %+v", entries)
	}
	if _, code = q.queue("retry", held); code != 1 {
		t.Error("retry of a held message succeeded")
	}
	if _, code = q.queue("delete", "1nosuchid"); code != 1 {
		t.Error("delete of an unknown id succeeded")
	}

	// The upstream comes up: the held message must stay put.
	up, err := sink.Start(sink.Options{Addr: q.upAddr, Cert: q.fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if out, code = q.queue("retry", "-all"); code != 0 {
		t.Fatalf("retry -all: %d %s", code, out)
	}
	time.Sleep(time.Second)
	if up.Count() != 0 {
		t.Fatalf("a held message was delivered")
	}
	if out, code = q.queue("release", held); code != 0 {
		t.Fatalf("release: %d %s", code, out)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("released message not delivered")
	}
	if got := up.Messages()[0].To; len(got) != 1 || got[0] != "held@e2e.test" {
		t.Errorf("delivered to %v; the deleted and bounced messages must not go", got)
	}
	eventually(t, func() bool { return len(q.list()) == 0 })
	if log := q.proc.log(); !strings.Contains(log, `"op":"delete"`) {
		t.Error("delete not logged")
	}
}

func TestQueueCommandsWithTheRelayStopped(t *testing.T) {
	q := newQueueFixture(t)
	id := q.submit("later@e2e.test", "offline")
	q.proc.cmd.Process.Signal(syscall.SIGTERM)
	q.proc.cmd.Wait()

	if out, code := q.queue("hold", id); code != 0 {
		t.Fatalf("offline hold: %d %s", code, out)
	}
	up, err := sink.Start(sink.Options{Addr: q.upAddr, Cert: q.fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	q.proc = startBinary(t, q.cfg)
	time.Sleep(time.Second)
	if up.Count() != 0 {
		t.Fatal("a message held offline was delivered after the start")
	}
	if out, code := q.queue("release", id); code != 0 {
		t.Fatalf("release: %d %s", code, out)
	}
	if !up.Wait(1, 10*time.Second) {
		t.Fatal("not delivered after release")
	}
}

// TestQueueListShowsEachPendingRecipient: `queue list` is mailq's view:
// each message with its sender and state, every pending recipient with
// its latest failure in short, the others counted; -json has every
// recipient's state.
func TestQueueListShowsEachPendingRecipient(t *testing.T) {
	fx := newUpstreamFixture(t)
	longNo := "come back later " + strings.Repeat("please ", 30)
	mixed, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate(), Refuse: func(rcpt string) *smtp.SMTPError {
		switch rcpt {
		case "gone@mixed.test":
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		case "later@mixed.test":
			return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: longNo}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer mixed.Close()
	q := newQueueFixtureWith(t, fx, e2eDest{"mixed.test", mixed.Addr(), ""})

	held := q.submit("held@e2e.test", "to hold")
	if out, code := q.queue("hold", held); code != 0 {
		t.Fatalf("hold: %d %s", code, out)
	}
	c, err := smtp.Dial(q.proc.addr)
	if err != nil {
		t.Fatal(err)
	}
	rcpts := []string{"ok@mixed.test", "gone@mixed.test", "later@mixed.test", "down@e2e.test"}
	if err := c.SendMail("app@sender.test", rcpts, strings.NewReader("Subject: mixed\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var mixedEntry relay.QueueEntry
	eventually(t, func() bool {
		for _, e := range q.list() {
			if e.ID != held && len(e.Delivered) == 1 && len(e.Failed) == 1 && len(e.Recipients) == 4 &&
				e.Recipients[2].LastClass != "" && e.Recipients[3].LastClass != "" {
				mixedEntry = e
				return true
			}
		}
		return false
	})

	// -json: every recipient's state, next to the fields scripts know.
	want := map[string]spool.RecipientStatus{"ok@mixed.test": spool.StatusDelivered, "gone@mixed.test": spool.StatusFailed,
		"later@mixed.test": spool.StatusPending, "down@e2e.test": spool.StatusPending}
	for i, rc := range mixedEntry.Recipients {
		if rc.Addr != rcpts[i] || rc.Status != want[rc.Addr] {
			t.Errorf("recipient %d: %+v, want %s %s", i, rc, rcpts[i], want[rcpts[i]])
		}
	}
	if rc := mixedEntry.Recipients[1]; !strings.Contains(rc.LastFailure, "no such user") || rc.Destination != "mixed.test" {
		t.Errorf("bounced recipient: %+v", rc)
	}
	if rc := mixedEntry.Recipients[2]; !strings.Contains(rc.LastFailure, "come back later") {
		t.Errorf("deferred recipient: %+v", rc)
	}
	if rc := mixedEntry.Recipients[3]; rc.LastClass != "connect" || rc.LastAttempt.IsZero() {
		t.Errorf("recipient of the upstream that is down: %+v", rc)
	}
	if len(mixedEntry.Pending) != 2 || mixedEntry.From != "app@sender.test" || mixedEntry.Attempts == 0 {
		t.Errorf("the fields that were there before: %+v", mixedEntry)
	}

	out, code := q.queue("list")
	if code != 0 {
		t.Fatalf("queue list: exit %d\n%s", code, out)
	}
	blocks := strings.Split(strings.TrimSpace(out), "\n\n")
	if len(blocks) != 3 {
		t.Fatalf("want two messages and a summary, separated by blank lines:\n%s", out)
	}
	heldBlock, mixedBlock := blocks[0], blocks[1]
	if !strings.HasPrefix(heldBlock, held+"  ") || !strings.Contains(heldBlock, "from <app@sender.test>  held (") ||
		!strings.Contains(heldBlock, "\n    held@e2e.test  connect: cannot connect") {
		t.Errorf("the held message:\n%s", heldBlock)
	}
	lines := strings.Split(mixedBlock, "\n")
	later := mixedEntry.Recipients[2]
	wantLines := []string{
		mixedEntry.ID + "  ",
		"    later@mixed.test  " + later.LastClass + ": ",
		"    down@e2e.test  connect: cannot connect",
		"    + 1 delivered, 1 bounced",
	}
	if len(lines) != len(wantLines) {
		t.Fatalf("the mixed message: want %d lines:\n%s", len(wantLines), mixedBlock)
	}
	for i, w := range wantLines {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d:\n got %s\nwant %s…", i+1, lines[i], w)
		}
	}
	if !strings.Contains(lines[0], "from <app@sender.test>") || !strings.Contains(lines[0], " attempt") {
		t.Errorf("header line lacks sender or state: %s", lines[0])
	}
	if !strings.Contains(lines[1], "come back later please") || !strings.HasSuffix(lines[1], "…") || len([]rune(lines[1])) > 180 {
		t.Errorf("a long failure is not clipped: %s", lines[1])
	}
	if !strings.HasPrefix(blocks[2], "-- 1 KiB in 2 messages, 3 recipients pending.") {
		t.Errorf("summary: %s", blocks[2])
	}
}

// TestQueueListJSONIsTheArrayItWas: the streamed -json output is byte for
// byte what encoding the whole list at once gives (scripts parse it), for
// an empty queue too.
func TestQueueListJSONIsTheArrayItWas(t *testing.T) {
	store, err := spool.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	check := func() {
		t.Helper()
		var streamed, whole bytes.Buffer
		if err := listQueue(&streamed, store, now, true); err != nil {
			t.Fatal(err)
		}
		entries, err := relay.ListQueue(store, now)
		if err != nil {
			t.Fatal(err)
		}
		printJSON(&whole, entries)
		if streamed.String() != whole.String() {
			t.Fatalf("streamed:\n%s\nwhole:\n%s", streamed.String(), whole.String())
		}
	}
	check()
	for i, rcpts := range [][]string{{"a@x.test"}, {"b@x.test", "c@y.test"}} {
		p, err := store.Create(spool.Envelope{From: "s@x.test", Recipients: rcpts, Received: now})
		if err != nil {
			t.Fatal(err)
		}
		p.Write([]byte("Subject: <&>\r\n\r\nbody\r\n"))
		if err := p.Commit(); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			st := spool.NewState(p.Envelope())
			st.Attempts, st.NextAttempt = 2, now.Add(time.Minute)
			st.Recipients[1].Class, st.Recipients[1].Reason = "connect", "cannot connect <here>"
			if err := store.SaveState(p.ID(), st); err != nil {
				t.Fatal(err)
			}
		}
	}
	check()
}
