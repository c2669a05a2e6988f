// Package mtasts implements the sending side of MTA-STS (RFC 8461): the
// _mta-sts TXT record, the policy fetched over verified HTTPS from
// mta-sts.<domain>, its parsing and matching, and a durable cache per
// domain used when a refetch fails.
package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Mode is a policy's mode.
type Mode string

// The three modes of RFC 8461 §3.2.
const (
	Enforce Mode = "enforce"
	Testing Mode = "testing"
	None    Mode = "none"
)

// MaxMaxAge is the largest max_age (one year, RFC 8461 §3.2).
const MaxMaxAge = 31557600

// Policy is a parsed MTA-STS policy.
type Policy struct {
	Mode   Mode
	MaxAge time.Duration
	MX     []string // patterns, lower case: "mx.example.com" or "*.example.com"
}

// ParseError is a policy (or TXT record) that does not follow RFC 8461.
type ParseError struct{ Msg string }

func (e *ParseError) Error() string { return "invalid MTA-STS policy: " + e.Msg }

// Parse parses a policy file: "key: value" lines ended by CRLF or LF;
// version STSv1, a mode, a max_age and, unless the mode is none, at least
// one mx pattern. Unknown keys are ignored (RFC 8461 §3.2).
func Parse(b []byte) (*Policy, error) {
	p := &Policy{}
	var version, mode, maxAge bool
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, &ParseError{fmt.Sprintf("line %q is not key: value", clip(line))}
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "version":
			if v != "STSv1" {
				return nil, &ParseError{fmt.Sprintf("version %q, not STSv1", clip(v))}
			}
			version = true
		case "mode":
			switch Mode(v) {
			case Enforce, Testing, None:
				p.Mode, mode = Mode(v), true
			default:
				return nil, &ParseError{fmt.Sprintf("mode %q is not enforce, testing or none", clip(v))}
			}
		case "max_age":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n > MaxMaxAge || len(v) > 10 {
				return nil, &ParseError{fmt.Sprintf("max_age %q is not a number of seconds up to %d", clip(v), MaxMaxAge)}
			}
			p.MaxAge, maxAge = time.Duration(n)*time.Second, true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(v, "."))
			if !validPattern(pat) {
				return nil, &ParseError{fmt.Sprintf("mx %q is not a host name or *.domain", clip(v))}
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case !version:
		return nil, &ParseError{"no version: STSv1"}
	case !mode:
		return nil, &ParseError{"no mode"}
	case !maxAge:
		return nil, &ParseError{"no max_age"}
	case len(p.MX) == 0 && p.Mode != None:
		return nil, &ParseError{"no mx pattern"}
	}
	return p, nil
}

func validPattern(p string) bool {
	p = strings.TrimPrefix(p, "*.")
	if p == "" || len(p) > 253 || strings.Contains(p, "*") {
		return false
	}
	for _, l := range strings.Split(p, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Matches reports whether the MX host name matches one of the policy's
// patterns: exactly, or "*.example.com" for one more leftmost label
// (a.example.com, not a.b.example.com nor example.com).
func (p *Policy) Matches(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			label, parent, found := strings.Cut(host, ".")
			if found && label != "" && parent == rest {
				return true
			}
			continue
		}
		if host == pat {
			return true
		}
	}
	return false
}

// String writes the policy in its file form.
func (p *Policy) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: STSv1\r\nmode: %s\r\n", p.Mode)
	for _, m := range p.MX {
		fmt.Fprintf(&b, "mx: %s\r\n", m)
	}
	fmt.Fprintf(&b, "max_age: %d\r\n", int64(p.MaxAge/time.Second))
	return b.String()
}

// ParseRecord finds the policy id in the TXT records at _mta-sts.<domain>:
// exactly one of them must start with "v=STSv1" (others are ignored) and
// carry id=<1 to 32 letters and digits>. ErrNoRecord when there is none.
func ParseRecord(txts []string) (string, error) {
	var sts []string
	for _, t := range txts {
		if strings.HasPrefix(t, "v=STSv1") {
			sts = append(sts, t)
		}
	}
	switch len(sts) {
	case 0:
		return "", ErrNoRecord
	case 1:
	default:
		return "", &ParseError{fmt.Sprintf("%d TXT records start with v=STSv1; there must be exactly one", len(sts))}
	}
	id := ""
	for i, f := range strings.Split(sts[0], ";") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		if i == 0 {
			if f != "v=STSv1" {
				return "", &ParseError{fmt.Sprintf("TXT record %q does not start with v=STSv1;", clip(sts[0]))}
			}
			continue
		}
		if k == "id" {
			id = v
		}
	}
	if id == "" || len(id) > 32 || strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) >= 0 {
		return "", &ParseError{fmt.Sprintf("TXT record %q has no id of 1 to 32 letters and digits", clip(sts[0]))}
	}
	return id, nil
}

// ErrNoRecord: the domain publishes no MTA-STS TXT record.
var ErrNoRecord = errors.New("no MTA-STS TXT record")

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
