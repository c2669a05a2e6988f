package spool

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendJSON appends the envelope as encoding/json would marshal it, byte
// for byte (FuzzEnvelopeJSON holds it to that). It exists because every
// accepted message writes one, and in a CPU profile of the relay under
// load json.Marshal's reflection and type-cache lookups took 6 % of the
// samples (4x slower than this even in a warm micro-benchmark).
func (e *Envelope) appendJSON(b []byte) ([]byte, error) {
	if y := e.Received.Year(); y < 0 || y > 9999 {
		return nil, &time.ParseError{Layout: time.RFC3339Nano, Message: ": year outside of range [0,9999]"}
	}
	b = append(b, `{"id":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"from":`...)
	b = appendJSONString(b, e.From)
	b = append(b, `,"rcpt":`...)
	if e.Recipients == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, r := range e.Recipients {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, r)
		}
		b = append(b, ']')
	}
	b = append(b, `,"received":"`...)
	b = e.Received.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if e.Client != "" {
		b = append(b, `,"client":`...)
		b = appendJSONString(b, e.Client)
	}
	if e.Helo != "" {
		b = append(b, `,"helo":`...)
		b = appendJSONString(b, e.Helo)
	}
	if e.Bounce {
		b = append(b, `,"bounce":true`...)
	}
	if e.UTF8 {
		b = append(b, `,"smtputf8":true`...)
	}
	if e.RequireTLS {
		b = append(b, `,"requiretls":true`...)
	}
	if e.Prepend != "" {
		b = append(b, `,"prepend":`...)
		b = appendJSONString(b, e.Prepend)
	}
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, e.Size, 10)
	return append(b, '}'), nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s the way encoding/json does by default: HTML
// characters, U+2028 and U+2029 escaped, invalid UTF-8 replaced.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// decodeEnvelope decodes an encoded envelope. The form appendJSON writes
// (fields in its order, strings without escapes) is read directly, about
// ten times faster than encoding/json, which matters when hundreds of
// thousands of queued messages are opened or listed; anything else —
// escapes, another field order, another writer — goes to encoding/json,
// which stays the definition.
func decodeEnvelope(b []byte, env *Envelope) error {
	if fastDecodeEnvelope(b, env) {
		return nil
	}
	*env = Envelope{}
	return json.Unmarshal(b, env)
}

// fastDecodeEnvelope reads appendJSON's exact form; false means "not that
// form" (env is then garbage), never a verdict on the input.
func fastDecodeEnvelope(b []byte, env *Envelope) bool {
	*env = Envelope{}
	d := fastDecoder{b: b}
	if !d.lit(`{"id":`) || !d.str(&env.ID) || !d.lit(`,"from":`) || !d.str(&env.From) || !d.lit(`,"rcpt":`) {
		return false
	}
	if d.lit("null") {
		env.Recipients = nil
	} else {
		if !d.lit("[") {
			return false
		}
		env.Recipients = []string{}
		for !d.lit("]") {
			if len(env.Recipients) > 0 && !d.lit(",") {
				return false
			}
			var r string
			if !d.str(&r) {
				return false
			}
			env.Recipients = append(env.Recipients, r)
		}
	}
	var received string
	if !d.lit(`,"received":`) || !d.str(&received) {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, received)
	if err != nil {
		return false
	}
	env.Received = t
	if d.lit(`,"client":`) && !d.str(&env.Client) {
		return false
	}
	if d.lit(`,"helo":`) && !d.str(&env.Helo) {
		return false
	}
	env.Bounce = d.lit(`,"bounce":true`)
	env.UTF8 = d.lit(`,"smtputf8":true`)
	if d.lit(`,"prepend":`) && !d.str(&env.Prepend) {
		return false
	}
	if !d.lit(`,"size":`) {
		return false
	}
	end := bytes.IndexByte(d.b, '}')
	if end < 0 || end != len(d.b)-1 {
		return false
	}
	n, err := strconv.ParseInt(string(d.b[:end]), 10, 64)
	if err != nil {
		return false
	}
	env.Size = n
	return true
}

type fastDecoder struct{ b []byte }

// lit consumes s if the input starts with it.
func (d *fastDecoder) lit(s string) bool {
	if len(d.b) < len(s) || string(d.b[:len(s)]) != s {
		return false
	}
	d.b = d.b[len(s):]
	return true
}

// str consumes a JSON string without escapes or control characters, all
// valid UTF-8 (what appendJSONString writes for such a value).
func (d *fastDecoder) str(out *string) bool {
	if len(d.b) == 0 || d.b[0] != '"' {
		return false
	}
	for i := 1; i < len(d.b); i++ {
		switch c := d.b[i]; {
		case c == '"':
			if !utf8.Valid(d.b[1:i]) {
				return false
			}
			*out = string(d.b[1:i])
			d.b = d.b[i+1:]
			return true
		case c == '\\' || c < 0x20:
			return false
		}
	}
	return false
}
