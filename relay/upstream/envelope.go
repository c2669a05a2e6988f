package upstream

import (
	"fmt"

	"tlsrelay/policy"
	"tlsrelay/relay/address"
)

// envelope is a message's sender and recipients parsed again from the
// spool's canonical strings, ready to be written on command lines: only a
// parsed address is ever written, so a line can carry neither a second
// address nor a parameter smuggled in the address.
type envelope struct {
	from address.Address // the zero Address for <>
	// rcpts are the recipients that may go, rawRcpts the same ones as the
	// caller named them (the keys of Result.Refused).
	rcpts    []address.Address
	rawRcpts []string
	utf8     bool // MAIL FROM carries SMTPUTF8
}

// envelope parses from and rcpts. A sender that does not parse, or that
// needs SMTPUTF8 the upstream does not offer, fails the message as a
// whole (permanently: retrying will not change it); such a recipient is
// refused alone, into refused. A non-ASCII address is never sent without
// SMTPUTF8.
func (c *Conn) envelope(from string, rcpts []string, submittedUTF8 bool, refused map[string]*policy.Failure) (envelope, error) {
	offers := c.has("SMTPUTF8")
	env := envelope{utf8: offers && submittedUTF8}
	if from != "" {
		a, err := address.Parse(from, true)
		if err != nil {
			return env, c.badAddress("sender", from, err)
		}
		if !a.IsASCII() && !offers {
			return env, c.noSMTPUTF8("sender", a)
		}
		env.from = a
		env.utf8 = env.utf8 || !a.IsASCII()
	}
	for _, r := range rcpts {
		a, err := address.Parse(r, true)
		if err != nil {
			refused[r] = c.badAddress("recipient", r, err)
			continue
		}
		if !a.IsASCII() && !offers {
			refused[r] = c.noSMTPUTF8("recipient", a)
			continue
		}
		env.utf8 = env.utf8 || !a.IsASCII()
		env.rcpts = append(env.rcpts, a)
		env.rawRcpts = append(env.rawRcpts, r)
	}
	return env, nil
}

// badAddress is the failure for a queued address that does not parse
// (one queued by a version of tlsrelay that did not parse addresses).
func (c *Conn) badAddress(role, raw string, err error) *policy.Failure {
	return &policy.Failure{Class: policy.Protocol, Host: c.Dest.Upstream, Permanent: true, Err: err,
		Detail: fmt.Sprintf("the queued %s address %q is not a valid envelope address (%v); it was not sent", role, raw, err),
		Fix:    "the front door refuses such addresses now; it was queued before that: ask the sender to resend with a valid address"}
}

// noSMTPUTF8 is the failure for a non-ASCII address and an upstream that
// does not offer SMTPUTF8.
func (c *Conn) noSMTPUTF8(role string, a address.Address) *policy.Failure {
	return &policy.Failure{Class: policy.UpstreamPermanent, Host: c.Dest.Upstream, Permanent: true,
		Detail: fmt.Sprintf("the %s address <%s> is not ASCII and the upstream does not offer SMTPUTF8; the relay never sends it without", role, a),
		Fix:    "use an ASCII address for this destination, or enable SMTPUTF8 on the upstream"}
}
