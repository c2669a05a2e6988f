package upstream

import (
	"context"
	"crypto/tls"
	"strings"

	"tlsrelay/policy"
)

// Probe is what `tlsrelay check` learns about an upstream: everything up
// to and including a verified TLS session and EHLO over it, and nothing
// more — no MAIL, RCPT, DATA or AUTH is ever sent.
type Probe struct {
	Dest *policy.Destination
	// Connected is false when no TCP connection could be made.
	Connected       bool
	Greeting        string
	PlainExtensions []string // EHLO before STARTTLS
	StartTLSOffered bool
	// Inspection judges the TLS session; nil when no handshake got as far
	// as the server's certificates.
	Inspection    *policy.Inspection
	TLSExtensions []string // EHLO after TLS (only when verification passed)
	// Failure is nil when mail to this destination would be sent.
	Failure *policy.Failure
}

// knownExtensions are the EHLO keywords a probe reports after TLS (the
// go-smtp client answers for one keyword at a time).
var knownExtensions = []string{"SIZE", "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "BINARYMIME",
	"DSN", "ENHANCEDSTATUSCODES", "REQUIRETLS", "AUTH", "STARTTLS", "DELIVERBY", "MT-PRIORITY", "RRVS"}

// Probe connects to dest's upstream exactly as delivery would, and reports.
func (d *Dialer) Probe(ctx context.Context, dest *policy.Destination) *Probe {
	p := &Probe{Dest: dest}
	var state *tls.ConnectionState
	conn, err := d.dialTLS(ctx, dest, func(cs tls.ConnectionState) { state = &cs })
	if conn != nil {
		p.Greeting, p.PlainExtensions = conn.Greeting, conn.PlainExtensions
	}
	if err == nil {
		state = &conn.TLS
		for _, kw := range knownExtensions {
			if ok, param := conn.Extension(kw); ok {
				p.TLSExtensions = append(p.TLSExtensions, joinParam(kw, param))
			}
		}
		conn.Close()
	} else {
		p.Failure = policy.FailureOf(dest.Upstream, err)
	}
	p.Connected = p.Failure == nil || p.Failure.Class != policy.Connect
	if dest.Mode == policy.StartTLS {
		// A server that offered STARTTLS and then refused it did offer it.
		p.StartTLSOffered = p.Failure == nil || p.Failure.Class != policy.StartTLSMissing || offers(p.PlainExtensions, "STARTTLS")
	}
	if state != nil {
		p.Inspection = dest.Inspect(*state, d.Clock)
	}
	return p
}

// offers reports whether EHLO reply lines list keyword kw.
func offers(lines []string, kw string) bool {
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], kw) {
			return true
		}
	}
	return false
}

func joinParam(kw, param string) string {
	if param == "" {
		return kw
	}
	return kw + " " + param
}
