package upstream

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/sink"
)

// BenchmarkSend is the delivery worker's share of every message: one
// pipelined transaction (MAIL, RCPT, BDAT LAST with 1 KiB) over a verified
// STARTTLS connection that stays open, to a go-smtp server on loopback,
// as when the pool reuses a connection. The server's work is included:
// both ends share this machine's CPUs.
func BenchmarkSend(b *testing.B) { benchSend(b, 16) }

// BenchmarkSendLarge is the same with 1 MiB messages: the body read back
// in large reads and written in full TLS records, gathered into large
// writes.
func BenchmarkSendLarge(b *testing.B) { benchSend(b, 16<<10) }

func benchSend(b *testing.B, lines int) {
	caFile, cert := serverCert(b, "mx.bench.test")
	up, err := sink.Start(sink.Options{Cert: cert, Discard: true})
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	dest, err := policy.Compile(policy.Spec{Domains: []string{"bench.test"}, Upstream: up.Addr(),
		CAFile: caFile, ServerName: "mx.bench.test", RequireHostname: []string{"mx.bench.test"}})
	if err != nil {
		b.Fatal(err)
	}
	d := &Dialer{LocalName: "relay.bench.test", Timeout: 10 * time.Second}
	c, err := d.Dial(context.Background(), dest)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if !c.has("PIPELINING") || !c.has("CHUNKING") {
		b.Fatalf("the sink offers %v; this benchmark is of the pipelined path", c.ext)
	}
	msg := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01\r\n"), lines)
	body := Body{Size: int64(len(msg)), Open: func() io.Reader { return bytes.NewReader(msg) }}
	rcpts := []string{"sink@bench.test"}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Send(context.Background(), "app@load.test", rcpts, body, false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if !up.Wait(b.N, 10*time.Second) {
		b.Fatalf("the sink counted %d of %d messages", up.Count(), b.N)
	}
}
