package spool

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func checkEnvelopeJSON(t *testing.T, env Envelope) {
	t.Helper()
	want, wantErr := json.Marshal(env)
	got, err := env.appendJSON(nil)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("error %v, encoding/json says %v", err, wantErr)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("appendJSON differs from encoding/json:\n got %s\nwant %s", got, want)
	}
	if err != nil {
		return
	}
	// Decoding gives what encoding/json gives, by the fast path or not.
	var viaJSON, decoded Envelope
	jerr := json.Unmarshal(got, &viaJSON)
	derr := decodeEnvelope(got, &decoded)
	if (jerr != nil) != (derr != nil) || !reflect.DeepEqual(viaJSON, decoded) {
		t.Fatalf("decodeEnvelope(%s) = %+v, %v; encoding/json: %+v, %v", got, decoded, derr, viaJSON, jerr)
	}
}

// TestEnvelopeDecodeFastPath: what appendJSON writes for a plain envelope
// is read by the fast path, and a field order of another writer is still
// read (by encoding/json).
func TestEnvelopeDecodeFastPath(t *testing.T) {
	env := Envelope{ID: "1a202ab1f68g475so2c5drsvmdz", From: "app@sender.test", Recipients: []string{"a@example.test"},
		Received: time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC), Client: "127.0.0.1:4242", Helo: "legacy.app", Size: 1024}
	b, _ := env.appendJSON(nil)
	var got Envelope
	if !fastDecodeEnvelope(b, &got) || !reflect.DeepEqual(got, env) {
		t.Fatalf("fast path: %+v", got)
	}
	other := []byte(`{"size":1024,"rcpt":["a@example.test"],"id":"1a202ab1f68g475so2c5drsvmdz","from":"app@sender.test","received":"2026-11-22T10:00:00.123456789Z","client":"127.0.0.1:4242","helo":"legacy.app"}`)
	if fastDecodeEnvelope(other, &got) {
		t.Fatal("the fast path took another field order")
	}
	if err := decodeEnvelope(other, &got); err != nil || !reflect.DeepEqual(got, env) {
		t.Fatalf("another field order: %+v, %v", got, err)
	}
	if id, _, ok := payloadID(append(append(other, '\n'), make([]byte, 1024)...)); !ok || id != env.ID {
		t.Fatalf("payloadID of another field order: %q %v", id, ok)
	}
}

func TestEnvelopeJSONMatchesEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 123456789, time.UTC)
	for _, env := range []Envelope{
		{},
		{ID: "1a202ab1f68g475so2c5drsvmdz", From: "app@sender.test", Recipients: []string{"a@example.test", "b@example.test"}, Received: at, Size: 1024},
		{From: "", Recipients: []string{}, Received: at.In(time.FixedZone("x", 3600)), Bounce: true},
		{From: "ünï@ex.test", Recipients: []string{`"john doe"@ex.test`}, Received: at, UTF8: true},
		{From: "a@ex.test", Recipients: []string{"b@ex.test"}, Received: at, UTF8: true, RequireTLS: true, Prepend: "X: y\r\n"},
		{Client: "127.0.0.1:4242", Helo: "legacy.app", Prepend: "DKIM-Signature: v=1;\r\n\tb=abc\r\n", Received: at},
		{From: "\"quoted\\name\"@x <&> \u2028\u2029 \x00\x01\x1f\x7f \b\f é \xff\xfe", Recipients: []string{"ünï@ex.test"}},
		{Received: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		checkEnvelopeJSON(t, env)
	}
}

func FuzzEnvelopeJSON(f *testing.F) {
	f.Add("id", "from@x.test", "rcpt@y.test", "127.0.0.1:1", "helo", "DKIM-Signature: a\r\n", int64(5), int64(1763800000), false, true, true)
	f.Add("<>", "\u2028", "\xff", "\x00", "&amp;", "\t\b\f", int64(-1), int64(-70000000000), true, false, false)
	f.Fuzz(func(t *testing.T, id, from, rcpt, client, helo, prepend string, size, unix int64, bounce, utf8, requireTLS bool) {
		checkEnvelopeJSON(t, Envelope{ID: id, From: from, Recipients: []string{rcpt, from}, Received: time.Unix(unix, size).UTC(),
			Client: client, Helo: helo, Bounce: bounce, UTF8: utf8, RequireTLS: requireTLS, Prepend: prepend, Size: size})
	})
}
