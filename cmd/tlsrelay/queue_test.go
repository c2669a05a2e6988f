package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tlsrelay/relay"
	"tlsrelay/relay/sink"
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
	fx := newUpstreamFixture(t)
	senderMX, err := sink.Start(sink.Options{Cert: fx.leaf.TLSCertificate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { senderMX.Close() })
	upAddr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "tlsrelay.toml")
	writeConfigFile(t, path, e2eConfig(t.TempDir(), fx.caFile, "",
		e2eDest{"e2e.test", upAddr, ""}, e2eDest{"sender.test", senderMX.Addr(), ""}))
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
	if code != 0 || !strings.Contains(out, held) || !strings.Contains(out, "connect") || !strings.Contains(out, "3 message(s)") {
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
