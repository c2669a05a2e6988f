package mx

import (
	"bufio"
	"io"
	"strings"
)

// maxHeaderScan bounds how much of a message is read to find its header.
const maxHeaderScan = 64 << 10

// TLSRequiredNo reports whether the message header (read from r, at most
// 64 KiB, up to the empty line) has the field "TLS-Required: No" (RFC
// 8689 §5). A message sent with REQUIRETLS ignores the field; the caller
// checks that.
func TLSRequiredNo(r io.Reader) bool {
	br := bufio.NewReader(io.LimitReader(r, maxHeaderScan))
	var field string
	found := false
	flush := func() {
		name, value, ok := strings.Cut(field, ":")
		if ok && strings.EqualFold(strings.TrimSpace(name), "TLS-Required") && strings.EqualFold(strings.TrimSpace(value), "No") {
			found = true
		}
		field = ""
	}
	for {
		line, err := br.ReadString('\n')
		trimmed := strings.TrimRight(line, "\r\n")
		switch {
		case trimmed == "":
			flush()
			return found // the end of the header (or of the message)
		case trimmed[0] == ' ' || trimmed[0] == '\t':
			field += " " + strings.TrimSpace(trimmed) // folded
		default:
			flush()
			field = trimmed
		}
		if err != nil {
			flush()
			return found
		}
	}
}
