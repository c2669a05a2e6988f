package headerfrom

import (
	"bytes"
	"errors"
	"net/mail"
	"strings"
	"testing"
)

const mailbox = "app@contoso.test"

// run writes msg through a Writer in pieces of size chunk (0: at once).
func run(t *testing.T, msg string, chunk int) (string, Result, error) {
	t.Helper()
	var out bytes.Buffer
	w := NewWriter(&out, mailbox)
	b := []byte(msg)
	for len(b) > 0 {
		n := len(b)
		if chunk > 0 {
			n = min(chunk, n)
		}
		if _, err := w.Write(b[:n]); err != nil {
			t.Fatalf("write: %v", err)
		}
		b = b[n:]
	}
	res, err := w.Close()
	return out.String(), res, err
}

func TestRewrite(t *testing.T) {
	const body = "\r\nFrom: not a header, the body\r\n.dot\r\n"
	for _, tc := range []struct {
		name, in, want string
		replyTo        bool
	}{
		{"display name kept", "From: Joe Bloggs <joe@example.com>\r\nTo: x@y.test\r\n" + body,
			"From: Joe Bloggs <app@contoso.test>\r\nTo: x@y.test\r\nReply-To: <joe@example.com>\r\n" + body, true},
		{"quoted name with specials", "To: x@y.test\r\nfrom: \"Bloggs, Joe <boss>\" <joe@example.com> (office)\r\n" + body,
			"To: x@y.test\r\nfrom: \"Bloggs, Joe <boss>\" <app@contoso.test> (office)\r\nReply-To: <joe@example.com>\r\n" + body, true},
		{"encoded words of any charset kept", "From: =?windows-1252?Q?J=F6rg_M=FCller?= <jm@example.com>\r\n" + body,
			"From: =?windows-1252?Q?J=F6rg_M=FCller?= <app@contoso.test>\r\nReply-To: <jm@example.com>\r\n" + body, true},
		{"folded", "From: \"A very long display name\"\r\n\t<joe@example.com>\r\nSubject: s\r\n" + body,
			"From: \"A very long display name\"\r\n\t<app@contoso.test>\r\nSubject: s\r\nReply-To: <joe@example.com>\r\n" + body, true},
		{"bare address", "From: joe@example.com\r\n" + body,
			"From: <app@contoso.test>\r\nReply-To: <joe@example.com>\r\n" + body, true},
		{"old-style comment name", "From: joe@example.com (Joe Bloggs)\r\n" + body,
			"From: \"Joe Bloggs\" <app@contoso.test>\r\nReply-To: <joe@example.com>\r\n" + body, true},
		{"quoted local part", "From: Joe <\"joe smith\"@example.com>\r\n" + body,
			"From: Joe <app@contoso.test>\r\nReply-To: <\"joe smith\"@example.com>\r\n" + body, true},
		{"Reply-To kept when present", "Reply-To: list@example.com\r\nFrom: Joe <joe@example.com>\r\n" + body,
			"Reply-To: list@example.com\r\nFrom: Joe <app@contoso.test>\r\n" + body, false},
		{"already the mailbox", "From: App <APP@contoso.test>\r\n" + body, "From: App <APP@contoso.test>\r\n" + body, false},
		{"no body", "Subject: s\r\nFrom: joe@example.com\r\n", "Subject: s\r\nFrom: <app@contoso.test>\r\nReply-To: <joe@example.com>\r\n", true},
	} {
		for _, chunk := range []int{0, 1, 7} {
			got, res, err := run(t, tc.in, chunk)
			if err != nil || got != tc.want || res.ReplyTo != tc.replyTo {
				t.Errorf("%s (chunks of %d): %v\n got %q\nwant %q (Reply-To added: %v, want %v)", tc.name, chunk, err, got, tc.want, res.ReplyTo, tc.replyTo)
			}
		}
	}
}

func TestRewriteRefused(t *testing.T) {
	for _, tc := range []struct{ name, in, why string }{
		{"several mailboxes", "From: a@example.com, b@example.com\r\n\r\nx\r\n", "names 2 mailboxes"},
		{"a group", "From: undisclosed:;\r\n\r\nx\r\n", "names no mailbox"},
		{"a group with a member", "From: team: a@example.com;\r\n\r\nx\r\n", "is a group"},
		{"no From", "To: x@y.test\r\n\r\nFrom: in the body\r\n", "no From header field"},
		{"two From fields", "From: a@example.com\r\nFrom: b@example.com\r\n\r\nx\r\n", "2 From header fields"},
		{"not an address", "From: joe\r\n\r\nx\r\n", "does not parse"},
		{"not a header", "From: joe@example.com\r\nhello world\r\n\r\n", "not a header field"},
		{"From too long", "From: " + strings.Repeat("x", maxLine) + " <a@b.test>\r\n\r\n", "longer than"},
	} {
		_, _, err := run(t, tc.in, 5)
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(e.Error(), tc.why) {
			t.Errorf("%s: %v, want an *Error saying %q", tc.name, err, tc.why)
		}
	}
}

// TestLongLinesPassThrough: a header line longer than the Writer holds
// (a long References, say) goes through unchanged; the body is never read
// as header.
func TestLongLinesPassThrough(t *testing.T) {
	long := "References: " + strings.Repeat("<id@example.com> ", 2000) + "\r\n"
	in := long + "From: Joe <joe@example.com>\r\n\r\n" + strings.Repeat("body ", 10000) + "\r\n"
	want := long + "From: Joe <app@contoso.test>\r\nReply-To: <joe@example.com>\r\n\r\n" + strings.Repeat("body ", 10000) + "\r\n"
	for _, chunk := range []int{0, 3, 4096} {
		got, _, err := run(t, in, chunk)
		if err != nil || got != want {
			t.Fatalf("chunks of %d: %v (output equal: %v)", chunk, err, got == want)
		}
		m, err := mail.ReadMessage(strings.NewReader(got))
		if err != nil || m.Header.Get("Reply-To") != "<joe@example.com>" {
			t.Fatalf("the result does not read as a message: %v", err)
		}
	}
}
