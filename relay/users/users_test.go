package users

import (
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// TestDummyHashCostsAsMuchAsARealOne: a login as a user that does not
// exist is checked against dummyHash, so that it takes as long as a wrong
// password for a real user (created by `tlsrelay passwd` at
// bcrypt.DefaultCost). The hash must therefore be a valid one at that cost.
func TestDummyHashCostsAsMuchAsARealOne(t *testing.T) {
	cost, err := bcrypt.Cost(dummyHash)
	if err != nil {
		t.Fatalf("dummyHash is not a bcrypt hash: %v", err)
	}
	if cost != bcrypt.DefaultCost {
		t.Errorf("dummyHash has cost %d, want bcrypt.DefaultCost (%d), the cost of real users' hashes", cost, bcrypt.DefaultCost)
	}
	if err := bcrypt.CompareHashAndPassword(dummyHash, []byte("tlsrelay-no-such-user")); err != nil {
		t.Errorf("dummyHash does not verify: %v", err)
	}
}
