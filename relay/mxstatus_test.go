package relay

import (
	"testing"

	"tlsrelay/policy"
)

// TestMXStatusCodes: the DSN status of each class of delivery to mail
// exchangers (RFC 3463, RFC 7505, RFC 8689), final and delayed.
func TestMXStatusCodes(t *testing.T) {
	for _, c := range []struct {
		class          policy.Class
		expired, final bool
		want           string
	}{
		{policy.RequireTLS, true, true, "5.7.30"}, // bounced after max_age: still says why
		{policy.RequireTLS, false, false, "4.7.30"},
		{policy.NullMX, false, true, "5.1.10"},
		{policy.NoSuchDomain, false, true, "5.1.2"},
		{policy.DNS, false, false, "4.4.3"},
		{policy.MXSecurityFailure, true, true, "5.7.5"},
		{policy.DANEMismatch, true, true, "5.7.5"},
	} {
		if got := statusCode(c.class, c.expired, c.final); got != c.want {
			t.Errorf("%s (expired %v, final %v): %s, want %s", c.class, c.expired, c.final, got, c.want)
		}
	}
}
