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

// BenchmarkIntake is the DATA intake on 1 MiB of DATA (dot-stuffed, with
// its end), as a session reads it: the DATA line and the 354 included.
func BenchmarkIntake(b *testing.B) {
	data := append(append([]byte("DATA\r\n"), bytes.ReplaceAll(mail, []byte("\r\nL"), []byte("\r\n..L"))...), ".\r\n"...)
	b.SetBytes(int64(len(data)))
	line := make([]byte, 6)
	for b.Loop() {
		c := NewConn(&chunkConn{in: data, sizes: []int{dataBufferSize}}, false)
		c.Write([]byte("220 relay.test\r\n"))
		io.ReadFull(c, line)
		c.Write([]byte("354 Go ahead\r\n"))
		if _, err := c.DataReader(0).WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
