package config

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Error is one configuration mistake: the file, the line when it could be
// found, the key, what is wrong and what to write instead.
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // e.g. "destination[2].min_tls"
	Msg  string // what is wrong
	// Fix is what to write instead ("write ...", "set ...", "run ..."),
	// when the mistake has one that is not already part of Msg.
	Fix string
}

// Error prints the mistake as a compiler does:
// file:line: key: what is wrong; what to write instead.
func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	msg := e.Msg
	if e.Fix != "" {
		msg += "; " + e.Fix
	}
	if e.Key == "" {
		return fmt.Sprintf("%s: %s", loc, msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Key, msg)
}

// Errors is every mistake found in one configuration file, in the order
// of their lines (those without a line last). Load and Parse return it
// (never empty) for a configuration that does not load.
type Errors []*Error

// Error prints one mistake per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As and errors.Is look at each mistake.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// fixVerbs start the part of a message that says what to write instead;
// newError files that part under Error.Fix, so the words stay as they are
// and a program still gets the two apart.
var fixVerbs = []string{"write ", "set ", "run ", "use ", "add ", "get "}

// newError builds an Error from a message that may end in its own fix
// ("… is not a TLS version; write \"1.2\" or \"1.3\"").
func newError(file string, line int, key, text string) *Error {
	e := &Error{File: file, Line: line, Key: key, Msg: text}
	for i := strings.Index(text, "; "); i >= 0; {
		rest := text[i+2:]
		for _, v := range fixVerbs {
			if strings.HasPrefix(rest, v) {
				e.Msg, e.Fix = text[:i], rest
				return e
			}
		}
		j := strings.Index(rest, "; ")
		if j < 0 {
			break
		}
		i += 2 + j
	}
	return e
}

// problems collects the mistakes of one file as the checks find them. A
// check on a key whose value could not even be decoded is skipped (its
// value is the default, not what the file says); a check that needs
// another key's value asks ok first, so one mistake is reported once and
// does not drag others along.
type problems struct {
	file      string
	list      Errors
	undecoded map[string]bool // keys whose value has the wrong type or form
}

// add records err (an *Error, or Errors); nil is ignored, so a check can
// be written as p.add(check()).
func (p *problems) add(err error) {
	var es Errors
	var e *Error
	switch {
	case err == nil:
		return
	case errors.As(err, &es):
		for _, e := range es {
			p.add(e)
		}
		return
	case errors.As(err, &e):
	default:
		e = &Error{File: p.file, Msg: err.Error()}
	}
	if p.undecoded[e.Key] {
		return
	}
	p.list = append(p.list, e)
}

// undecodable records a key whose value could not be decoded: later
// checks of that key are moot.
func (p *problems) undecodable(e *Error) {
	p.list = append(p.list, e)
	if p.undecoded == nil {
		p.undecoded = map[string]bool{}
	}
	p.undecoded[e.Key] = true
}

// ok reports whether none of keys has a mistake so far: checks that
// depend on another key's value run only then.
func (p *problems) ok(keys ...string) bool {
	for _, e := range p.list {
		if slices.Contains(keys, e.Key) {
			return false
		}
	}
	return true
}

// undecodedUnder reports whether a key of table (or of one of its
// [[table]] entries) could not be decoded.
func (p *problems) undecodedUnder(table string) bool {
	for k := range p.undecoded {
		if k == table || strings.HasPrefix(k, table+".") || strings.HasPrefix(k, table+"[") {
			return true
		}
	}
	return false
}

// err returns the mistakes in line order, or nil.
func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	slices.SortStableFunc(p.list, func(a, b *Error) int {
		if (a.Line == 0) != (b.Line == 0) {
			if a.Line == 0 {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.Line, b.Line)
	})
	return p.list
}
