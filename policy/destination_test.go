package policy_test

import (
	"errors"
	"strings"
	"testing"

	"tlsrelay/policy"
)

// TestCompileReportsEveryWrongKey: one destination with several wrong keys
// gets them all back, each a *policy.FieldError.
func TestCompileReportsEveryWrongKey(t *testing.T) {
	_, err := policy.Compile(policy.Spec{Domains: []string{"example.test", "exa mple.test"}, Upstream: "mx.example.test",
		MinTLS: "1.0", CAFile: "/nonexistent/ca.pem", OnFailure: "drop", PinSHA256: []string{"abc"}})
	if err == nil {
		t.Fatal("accepted")
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("%T is not a joined error: %v", err, err)
	}
	var keys []string
	for _, e := range j.Unwrap() {
		var fe *policy.FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("%T is not a FieldError: %v", e, e)
		}
		keys = append(keys, fe.Key)
	}
	if got, want := strings.Join(keys, " "), "domains upstream min_tls ca_file pin_sha256 on_failure"; got != want {
		t.Errorf("keys %q, want %q\n%v", got, want, err)
	}
	// One wrong key: the FieldError itself, as before.
	_, err = policy.Compile(policy.Spec{Domains: []string{"example.test"}, Upstream: "mx.example.test:25", MinTLS: "1.1"})
	if fe, ok := err.(*policy.FieldError); !ok || fe.Key != "min_tls" {
		t.Errorf("one wrong key: %T %v", err, err)
	}
}
