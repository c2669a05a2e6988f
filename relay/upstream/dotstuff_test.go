package upstream

import (
	"bufio"
	"bytes"
	"math/rand"
	"net/textproto"
	"testing"
)

// textprotoDotted is the reference: what textproto's DotWriter sends for
// body written in the given pieces.
func textprotoDotted(pieces [][]byte) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	dw := textproto.NewWriter(bw).DotWriter()
	for _, p := range pieces {
		dw.Write(p)
	}
	dw.Close()
	return out.Bytes()
}

func ourDotted(t testing.TB, pieces [][]byte) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriterSize(&out, 64)
	dw := &dotWriter{w: bw}
	for _, p := range pieces {
		if n, err := dw.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write: %d of %d, %v", n, len(p), err)
		}
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	return out.Bytes()
}

func TestDotWriterCases(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{"a\r", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"a\r\n.b\r\n..c\r\n", "a\r\n..b\r\n...c\r\n.\r\n"},
		{"a.\r\n.", "a.\r\n..\r\n.\r\n"},
		{"a\nb\n", "a\r\nb\r\n.\r\n"},              // bare LF becomes CRLF
		{"\n.\n", "\r\n..\r\n.\r\n"},               // and the line after it is a line
		{"a\r\n\r\n.\r\n", "a\r\n\r\n..\r\n.\r\n"}, // an empty line, then a dot
	} {
		// Every split into two writes gives the same bytes.
		for cut := 0; cut <= len(tc.in); cut++ {
			got := ourDotted(t, [][]byte{[]byte(tc.in[:cut]), []byte(tc.in[cut:])})
			if string(got) != tc.want {
				t.Errorf("%q cut at %d: %q, want %q", tc.in, cut, got, tc.want)
			}
		}
	}
}

// TestDotWriterMatchesTextproto holds the fast writer to textproto's
// DotWriter on random bodies of CRLF lines (what the spool holds), with
// dots, empty lines and bare LFs, written in random pieces.
func TestDotWriterMatchesTextproto(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	atoms := []string{"a", "xyz", ".", "..", "\r\n", "\r\n", "\n", " "}
	for i := 0; i < 5000; i++ {
		var body []byte
		for n := rng.Intn(40); n > 0; n-- {
			body = append(body, atoms[rng.Intn(len(atoms))]...)
		}
		var pieces [][]byte
		for rest := body; len(rest) > 0; {
			k := 1 + rng.Intn(len(rest))
			pieces = append(pieces, rest[:k])
			rest = rest[k:]
		}
		want := textprotoDotted(pieces)
		if got := ourDotted(t, pieces); !bytes.Equal(got, want) {
			t.Fatalf("body %q in %d pieces: %q, textproto %q", body, len(pieces), got, want)
		}
	}
}

// BenchmarkDotWriter is the DATA path's dot-stuffing of a 1 MiB body
// with a line-initial dot every 100 lines, against textproto's.
func BenchmarkDotWriter(b *testing.B) {
	var m bytes.Buffer
	for i := 0; m.Len() < 1<<20; i++ {
		if i%100 == 0 {
			m.WriteString(".a line that starts with a dot\r\n")
			continue
		}
		m.WriteString("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcde\r\n")
	}
	body := m.Bytes()
	bw := bufio.NewWriterSize(discard{}, writeBuffer)
	b.Run("tlsrelay", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for i := 0; i < b.N; i++ {
			dw := &dotWriter{w: bw}
			for off := 0; off < len(body); off += bodyRead {
				dw.Write(body[off:min(off+bodyRead, len(body))])
			}
			dw.Close()
			bw.Flush()
		}
	})
	b.Run("textproto", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for i := 0; i < b.N; i++ {
			dw := textproto.NewWriter(bw).DotWriter()
			for off := 0; off < len(body); off += 32 << 10 {
				dw.Write(body[off:min(off+32<<10, len(body))])
			}
			dw.Close()
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
