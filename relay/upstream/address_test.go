package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"tlsrelay/policy"
	"tlsrelay/relay/address"
)

// TestSendWritesAddressesFromTheParsedForm: the command lines are the
// canonical form of the parsed address, re-quoted where needed, and an
// address that does not parse (as an older spool may hold: the issue's
// example, pasted raw) is never written.
func TestSendWritesAddressesFromTheParsedForm(t *testing.T) {
	up, dest := startScripted(t, "PIPELINING", "CHUNKING", "8BITMIME")
	c := dial(t, dest)
	defer c.Close()
	injected := "victim@evil.example> ORCPT=rfc822;x@example.test"
	res, err := c.Send(context.Background(), `"john doe"@example.test`,
		[]string{`"a\"b"@Example.TEST`, injected, "ok@example.test"}, body(testBody), false)
	if err != nil {
		t.Fatal(err)
	}
	f := res.Refused[injected]
	var ae *address.Error
	if f == nil || !f.Permanent || !errors.As(f, &ae) || !strings.Contains(f.Detail, "not a valid envelope address") {
		t.Fatalf("unparsable recipient: %+v, want a permanent failure wrapping *address.Error", f)
	}
	if len(res.Refused) != 1 {
		t.Fatalf("refused %v", res.Refused)
	}
	want := []string{"EHLO relay.test",
		`MAIL FROM:<"john doe"@example.test> BODY=8BITMIME`, `RCPT TO:<"a\"b"@example.test>`, "RCPT TO:<ok@example.test>",
		fmt.Sprintf("BDAT %d LAST", len(testBody))}
	if got := lines(up.commands()); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("commands:\n got %q\nwant %q", got, want)
	}

	// A sender that does not parse fails the message; nothing is written.
	n := len(up.commands())
	_, err = c.Send(context.Background(), "a@b@example.test", []string{"ok@example.test"}, body(testBody), false)
	var pf *policy.Failure
	if !errors.As(err, &pf) || !pf.Permanent || pf.Class != policy.Protocol {
		t.Fatalf("unparsable sender: %v", err)
	}
	// All-or-nothing: one recipient that cannot go stops the message.
	res, err = c.Send(context.Background(), "app@sender.test", []string{"ok@example.test", "a..b@example.test"}, body(testBody), true)
	if err != nil || res.Refused["a..b@example.test"] == nil {
		t.Fatalf("all-or-nothing with an unparsable recipient: %v %v", err, res.Refused)
	}
	if got := up.commands(); len(got) != n {
		t.Fatalf("commands written for messages that must not go: %q", lines(got[n:]))
	}
	if len(up.delivered()) != 1 {
		t.Fatalf("delivered %d, want 1", len(up.delivered()))
	}
}

// TestSendSMTPUTF8: a non-ASCII address goes with SMTPUTF8 to an upstream
// that offers it, and never to one that does not; a message submitted
// with SMTPUTF8 keeps it even when its addresses are ASCII.
func TestSendSMTPUTF8(t *testing.T) {
	t.Run("offered", func(t *testing.T) {
		up, dest := startScripted(t, "PIPELINING", "CHUNKING", "SMTPUTF8")
		c := dial(t, dest)
		defer c.Close()
		if res, err := c.Send(context.Background(), "ünï@sender.test", []string{"ascii@example.test"}, body(testBody), false); err != nil || len(res.Refused) > 0 {
			t.Fatalf("%v %v", err, res.Refused)
		}
		b := body(testBody)
		b.UTF8 = true
		if res, err := c.Send(context.Background(), "app@sender.test", []string{"ascii@example.test"}, b, false); err != nil || len(res.Refused) > 0 {
			t.Fatalf("%v %v", err, res.Refused)
		}
		if res, err := c.Send(context.Background(), "app@sender.test", []string{"ascii@example.test"}, body(testBody), false); err != nil || len(res.Refused) > 0 {
			t.Fatalf("%v %v", err, res.Refused)
		}
		var mails []string
		for _, l := range lines(up.commands()) {
			if strings.HasPrefix(l, "MAIL") {
				mails = append(mails, l)
			}
		}
		want := []string{"MAIL FROM:<ünï@sender.test> SMTPUTF8", "MAIL FROM:<app@sender.test> SMTPUTF8", "MAIL FROM:<app@sender.test>"}
		if strings.Join(mails, "|") != strings.Join(want, "|") {
			t.Fatalf("MAIL lines %q, want %q", mails, want)
		}
	})
	t.Run("not offered", func(t *testing.T) {
		up, dest := startScripted(t, "PIPELINING", "CHUNKING")
		c := dial(t, dest)
		defer c.Close()
		_, err := c.Send(context.Background(), "ünï@sender.test", []string{"ascii@example.test"}, body(testBody), false)
		var pf *policy.Failure
		if !errors.As(err, &pf) || !pf.Permanent || !strings.Contains(pf.Detail, "does not offer SMTPUTF8") {
			t.Fatalf("non-ASCII sender to an upstream without SMTPUTF8: %v", err)
		}
		res, err := c.Send(context.Background(), "app@sender.test", []string{"ünï@example.test", "ascii@example.test"}, body(testBody), false)
		if err != nil {
			t.Fatal(err)
		}
		if f := res.Refused["ünï@example.test"]; f == nil || !f.Permanent || !strings.Contains(f.Detail, "does not offer SMTPUTF8") {
			t.Fatalf("non-ASCII recipient: %+v", f)
		}
		// An ASCII envelope submitted with SMTPUTF8 goes, without it.
		b := body(testBody)
		b.UTF8 = true
		if res, err := c.Send(context.Background(), "app@sender.test", []string{"ascii@example.test"}, b, false); err != nil || len(res.Refused) > 0 {
			t.Fatalf("%v %v", err, res.Refused)
		}
		for _, l := range lines(up.commands()) {
			if !utf8ASCII(l) || strings.Contains(l, "SMTPUTF8") {
				t.Errorf("%q sent to an upstream without SMTPUTF8", l)
			}
		}
		if len(up.delivered()) != 2 {
			t.Fatalf("delivered %d, want 2", len(up.delivered()))
		}
	})
}

func utf8ASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
