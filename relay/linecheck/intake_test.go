package linecheck

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// chunkConn is a client connection whose reads return the given bytes
// in chunks of the given sizes (the last size repeats), and discards
// what is written.
type chunkConn struct {
	net.Conn
	in    []byte
	sizes []int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.in))
	if len(c.sizes) > 0 {
		n = min(n, c.sizes[0])
		if len(c.sizes) > 1 {
			c.sizes = c.sizes[1:]
		}
	}
	copy(p, c.in[:n])
	c.in = c.in[n:]
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error) { return len(p), nil }

// intakeResult is what a session sees of one DATA: the data (or the
// verdict against it), and what go-smtp reads after it.
type intakeResult struct {
	data  []byte
	err   error
	after []byte // what go-smtp reads from the end of data on
}

// runIntake drives a Conn as go-smtp and the relay's session do: the
// client's DATA line and the server's 354, the session reading the data
// through a DataReader (with WriteTo, or with Read in reads of readSize
// bytes), then go-smtp reading on to the end of the stream.
func runIntake(t *testing.T, data []byte, sizes []int, maxLine int, maxSize int64, readSize int) intakeResult {
	t.Helper()
	cc := &chunkConn{in: append([]byte("DATA\r\n"), data...), sizes: sizes}
	c := NewConn(cc, false)
	c.MaxLineLength = maxLine
	c.Write([]byte("220 relay.test ESMTP\r\n"))
	line := make([]byte, 6)
	if _, err := io.ReadFull(c, line); err != nil || string(line) != "DATA\r\n" {
		t.Fatalf("the DATA line read as %q, %v", line, err)
	}
	c.Write([]byte("354 Go ahead\r\n"))
	d := c.DataReader(maxSize)
	if d == nil {
		t.Fatal("no DataReader after 354")
	}
	var res intakeResult
	var out bytes.Buffer
	if readSize == 0 {
		_, res.err = d.WriteTo(&out)
	} else {
		buf := make([]byte, readSize)
		for {
			n, err := d.Read(buf)
			out.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				res.err = err
				break
			}
		}
	}
	res.data = out.Bytes()
	after, err := io.ReadAll(c)
	if err != nil && res.err == nil {
		res.err = err
	}
	res.after = after
	return res
}

// referenceIntake is what go-smtp's own path made of the data before
// the intake: the raw-stream discipline (Conn outside DATA), then
// go-smtp's data reader (its state machine, copied from go-smtp v0.25.1
// data.go, with its line limit counted as lineLimitReader does), then the
// data check (Reader); the size limit as the intake applies it (data of
// more than maxSize bytes). after is the rest of the stream as go-smtp
// reads it, starting with the terminator.
func referenceIntake(data []byte, maxLine int, maxSize int64) intakeResult {
	disciplined, _ := io.ReadAll(NewConn(pipeConn{r: bytes.NewReader(data)}, false))
	const (
		stateBeginLine = iota
		stateDot
		stateDotCR
		stateCR
		stateData
		stateEOF
	)
	var res intakeResult
	var out []byte
	state, lineLen, i := stateBeginLine, 1, 0 // the LF of DATA's line counts
	for ; i < len(disciplined) && state != stateEOF; i++ {
		c := disciplined[i]
		if c == '\n' {
			lineLen = 0
		}
		lineLen++
		if maxLine > 0 && lineLen > maxLine {
			return intakeResult{err: smtp.ErrTooLongLine}
		}
		switch state {
		case stateBeginLine:
			if c == '.' {
				state = stateDot
				continue
			}
			if c == '\r' {
				state = stateCR
				break
			}
			state = stateData
		case stateDot:
			if c == '\r' {
				state = stateDotCR
				continue
			}
			state = stateData
		case stateDotCR:
			if c == '\n' {
				state = stateEOF
				continue
			}
			state = stateData
		case stateCR:
			if c == '\n' {
				state = stateBeginLine
				break
			}
			state = stateData
		case stateData:
			if c == '\r' {
				state = stateCR
			}
		}
		out = append(out, c)
	}
	if state != stateEOF {
		return intakeResult{err: io.ErrUnexpectedEOF}
	}
	checked, err := io.ReadAll(&Reader{R: bytes.NewReader(out)})
	switch {
	case err != nil:
		res.err = err
	case maxSize > 0 && int64(len(out)) > maxSize:
		res.err = ErrTooLarge
	default:
		res.data = checked
	}
	res.after = append([]byte(".\r\n"), disciplined[i:]...)
	return res
}

// sameVerdict compares an intake result with the reference: the same
// data when accepted, the same verdict when refused, and the same stream
// after the data; when the session ends (a line too long, the stream
// cut), it was refused and go-smtp saw no end of data.
//
// A message both too large and undisciplined is refused for either
// reason, whichever the reads come to first.
func sameVerdict(got, want intakeResult) bool {
	refused := func(err error) bool { return err == ErrTooLarge || err == ErrBareLineEnding }
	if refused(got.err) && refused(want.err) {
		return bytes.Equal(got.after, want.after)
	}
	if errors.Is(want.err, smtp.ErrTooLongLine) || errors.Is(want.err, io.ErrUnexpectedEOF) {
		// The session ends: go-smtp never sees an end of data.
		return got.err != nil && len(got.after) == 0
	}
	if !errors.Is(got.err, want.err) {
		return false
	}
	return bytes.Equal(got.data, want.data) && bytes.Equal(got.after, want.after)
}

const afterData = "MAIL FROM:<next@x>\r\nQUIT\r\n"

var intakeCases = []struct {
	name, in, data string
	err            error
}{
	{"empty", ".\r\n", "", nil},
	{"plain", "a\r\nb\r\n.\r\n", "a\r\nb\r\n", nil},
	{"empty lines", "\r\n\r\nx\r\n\r\n.\r\n", "\r\n\r\nx\r\n\r\n", nil},
	{"stuffed dot", "..\r\n..x\r\n.y\r\n.\r\n", ".\r\n.x\r\ny\r\n", nil},
	{"dot not at line start", "a.\r\n a.\r\n.\r\n", "a.\r\n a.\r\n", nil},
	{"8bit", "\xc3\xa9t\xc3\xa9\r\n.\r\n", "\xc3\xa9t\xc3\xa9\r\n", nil},
	{`\n.\n`, "a\n.\nMAIL FROM:<evil@x>\r\n.\r\n", "", ErrBareLineEnding},
	{`\n.\r\n`, "a\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n", "", ErrBareLineEnding},
	{`\r.\r\n`, "a\r.\r\nMAIL FROM:<evil@x>\r\n.\r\n", "", ErrBareLineEnding},
	{`\r\n.\r`, "a\r\n.\rMAIL FROM:<evil@x>\r\n.\r\n", "", ErrBareLineEnding},
	{`\r\n.\n`, "a\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n", "", ErrBareLineEnding},
	{`\r\n.\rX`, "a\r\n.\rX\r\n.\r\n", "", ErrBareLineEnding},
	{"bare LF", "a\nb\r\n.\r\n", "", ErrBareLineEnding},
	{"bare CR", "a\rb\r\n.\r\n", "", ErrBareLineEnding},
	{"CR CR LF", "a\r\r\n.\r\n", "", ErrBareLineEnding},
	{"NUL", "a\x00b\r\n.\r\n", "", ErrBareLineEnding},
	{"LF at line start", "\n.\r\n.\r\n", "", ErrBareLineEnding},
	{"too large", "0123456789\r\n.\r\n", "", ErrTooLarge},
	{"line at the limit", strings.Repeat("x", 38) + "\r\n.\r\n", strings.Repeat("x", 38) + "\r\n", nil},
	{"line over the limit", strings.Repeat("x", 39) + "\r\n.\r\n", "", smtp.ErrTooLongLine},
	{"cut", "a\r\nb", "", io.ErrUnexpectedEOF},
	{"cut after CR", "a\r\n.\r", "", io.ErrUnexpectedEOF},
}

// TestIntake checks the intake on the edge cases, with every split of the
// stream into two reads and with one-byte reads, read by WriteTo and by
// Read: the same data and verdict as the reference, and the commands
// after the data read by go-smtp from just after it.
func TestIntake(t *testing.T) {
	for _, c := range intakeCases {
		in := []byte(c.in + afterData)
		maxSize := int64(0)
		if c.err == ErrTooLarge {
			maxSize = 11
		}
		want := referenceIntake(in, 40, maxSize)
		if !errors.Is(want.err, c.err) || want.err == nil && string(want.data) != c.data {
			t.Fatalf("%s: the reference gives %q, %v; the case says %q, %v", c.name, want.data, want.err, c.data, c.err)
		}
		if c.err == nil && string(want.after) != ".\r\n"+afterData {
			t.Fatalf("%s: the reference goes on with %q", c.name, want.after)
		}
		splits := [][]int{nil, {1}}
		for k := 1; k < 6+len(c.in); k++ {
			splits = append(splits, []int{k, 1 << 20})
		}
		for _, sizes := range splits {
			for _, readSize := range []int{0, 1, 7} {
				got := runIntake(t, in, sizes, 40, maxSize, readSize)
				if !sameVerdict(got, want) {
					t.Errorf("%s (reads %v, session reads %d): got %q, %v, then %q; want %q, %v, then %q",
						c.name, sizes, readSize, got.data, got.err, got.after, want.data, want.err, want.after)
				}
			}
		}
	}
}

// TestIntakeAcrossBuffers relays a large message whose stuffed dots,
// CRLFs and terminator fall on the intake's buffer boundaries, split at
// every offset around them.
func TestIntakeAcrossBuffers(t *testing.T) {
	line := strings.Repeat("x", 70) + "\r\n"
	// Reads of the whole stream: the small buffer twice (the second read
	// fills it, so the intake takes a data buffer), then data buffers.
	boundaries := []int{smallBuffer, 2 * smallBuffer, 2*smallBuffer + dataBufferSize}
	for _, tail := range []string{"..stuffed\r\n", "\r\n", ".\r\n", "x\r\n"} {
		for k := 0; k < 3*9; k++ {
			at, shift := boundaries[k/9], k%9-4
			var m strings.Builder
			// The DATA line is 6 bytes: data offset o is stream offset o+6.
			for m.Len() < at+shift-6 {
				m.WriteString(line[:min(len(line), at+shift-6-m.Len())])
			}
			body := m.String()
			if !strings.HasSuffix(body, "\r\n") {
				body += "\r\n"
			}
			in := []byte(body + tail + line + ".\r\n" + afterData)
			if tail == ".\r\n" {
				in = []byte(body + tail + afterData) // the terminator itself on the boundary
			}
			want := referenceIntake(in, 2000, 0)
			if want.err != nil {
				t.Fatalf("reference: %v", want.err)
			}
			for _, sizes := range [][]int{nil, {smallBuffer - 1}, {6, smallBuffer, dataBufferSize - 1, 1}} {
				for _, readSize := range []int{0, 4096} {
					if got := runIntake(t, in, sizes, 2000, 0, readSize); !sameVerdict(got, want) {
						t.Errorf("tail %q shift %d reads %v: %d bytes, %v, then %q; want %d bytes, then %q",
							tail, shift, sizes, len(got.data), got.err, got.after, len(want.data), want.after)
					}
				}
			}
		}
	}
}

// FuzzDataIntake compares the intake with the reference on any data
// and any split of it into reads.
func FuzzDataIntake(f *testing.F) {
	for _, c := range intakeCases {
		f.Add([]byte(c.in+afterData), uint64(1))
	}
	f.Add([]byte("..\r\n.\r\r\n.\r\n"), uint64(7))
	f.Fuzz(func(t *testing.T, in []byte, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, seed))
		sizes := make([]int, 8)
		for i := range sizes {
			sizes[i] = 1 + rng.IntN(max(1, len(in)))
		}
		maxLine := []int{0, 3, 40, 2000}[seed%4]
		maxSize := []int64{0, 5, 100}[seed/4%3]
		want := referenceIntake(in, maxLine, maxSize)
		for _, readSize := range []int{0, 1 + int(seed%13)} {
			if got := runIntake(t, in, sizes, maxLine, maxSize, readSize); !sameVerdict(got, want) {
				t.Fatalf("%q (reads %v, limits %d/%d, session reads %d): got %q, %v, then %q; want %q, %v, then %q",
					in, sizes, maxLine, maxSize, readSize, got.data, got.err, got.after, want.data, want.err, want.after)
			}
		}
	})
}

// TestSessionReadingGoSMTPsReader: a session that does not take the
// DataReader gets the data through go-smtp's reader as before, the
// discipline applied by the raw-stream layer.
func TestSessionReadingGoSMTPsReader(t *testing.T) {
	cc := &chunkConn{in: []byte("DATA\r\na\nb\r\n..\r\n.\r\nQUIT\r\n")}
	c := NewConn(cc, false)
	c.Write([]byte("220 relay.test ESMTP\r\n"))
	line := make([]byte, 6)
	io.ReadFull(c, line)
	c.Write([]byte("354 Go ahead\r\n"))
	rest, _ := io.ReadAll(c)
	if string(rest) != "a\x00b\r\n..\r\n.\r\nQUIT\r\n" {
		t.Fatalf("go-smtp read %q", rest)
	}
	if c.DataReader(0) != nil {
		t.Fatal("a DataReader after go-smtp read the data")
	}
}

// TestNoDataReaderWithout354: a DATA line the server does not answer 354
// (no recipient, say) starts no data; what follows is commands.
func TestNoDataReaderWithout354(t *testing.T) {
	cc := &chunkConn{in: []byte("DATA\r\nMAIL FROM:<a@x>\r\n")}
	c := NewConn(cc, false)
	c.Write([]byte("220 relay.test ESMTP\r\n"))
	line := make([]byte, 6)
	io.ReadFull(c, line)
	c.Write([]byte("554 5.5.1 No valid recipients\r\n"))
	if c.DataReader(0) != nil {
		t.Fatal("a DataReader without 354")
	}
	if rest, _ := io.ReadAll(c); string(rest) != "MAIL FROM:<a@x>\r\n" {
		t.Fatalf("go-smtp read %q", rest)
	}
}
