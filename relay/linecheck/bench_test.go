package linecheck

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

var mail = []byte(strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod t\r\n", 14000)) // ~1 MiB

// BenchmarkConn is the raw-stream guard on 1 MiB of DATA.
func BenchmarkConn(b *testing.B) {
	b.SetBytes(int64(len(mail)))
	for b.Loop() {
		n, _ := io.Copy(io.Discard, NewConn(pipeConn{r: bytes.NewReader(mail)}, false))
		if n != int64(len(mail)) {
			b.Fatal(n)
		}
	}
}

// BenchmarkReader is the message data check on 1 MiB.
func BenchmarkReader(b *testing.B) {
	b.SetBytes(int64(len(mail)))
	for b.Loop() {
		if _, err := io.Copy(io.Discard, &Reader{R: bytes.NewReader(mail)}); err != nil {
			b.Fatal(err)
		}
	}
}
