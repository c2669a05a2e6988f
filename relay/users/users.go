// Package users holds the accounts that may authenticate to the relay's
// front door: the auth_users_file, one "user:bcrypt-hash[:senders]" line
// per account.
package users

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"tlsrelay/relay/address"
)

// User is one account.
type User struct {
	Name string
	hash []byte
	// Senders are the envelope senders this user may use, as patterns
	// (lower-cased, as written; see SenderPattern): "app@example.com",
	// "*@example.com", "*". Empty: any sender.
	Senders []string
	senders []SenderPattern
}

// DB is the set of accounts.
type DB struct {
	users map[string]*User
}

// dummyHash is compared against when the user does not exist, so that a
// wrong name costs as much time as a wrong password. It is a bcrypt hash
// at bcrypt.DefaultCost, the cost `tlsrelay passwd` uses, of a fixed
// string; written out rather than computed at start, which cost every
// tlsrelay command 60 ms.
var dummyHash = []byte("$2a$10$D9rtPVhwFJ7upEpQ2M/S6OuSwvxjkEfMyDGnTQbLpZKAxoz9oMuca")

// Load reads an auth_users_file. The file must not be writable or readable
// by others: whoever can write it can add a user.
func Load(file string) (*DB, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o022 != 0 || fi.Mode().Perm()&0o004 != 0 {
		return nil, fmt.Errorf("%s has mode %v: it must not be writable by group or others nor world-readable; run chmod 600 %s", file, fi.Mode().Perm(), file)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	db := &DB{users: map[string]*User{}}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, err := ParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", file, n, err)
		}
		if db.users[u.Name] != nil {
			return nil, fmt.Errorf("%s:%d: user %q appears twice", file, n, u.Name)
		}
		db.users[u.Name] = u
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(db.users) == 0 {
		return nil, fmt.Errorf("%s holds no users; add lines made by `tlsrelay passwd USER`", file)
	}
	return db, nil
}

// ParseLine parses "user:bcrypt-hash" or "user:bcrypt-hash:pattern,pattern".
func ParseLine(line string) (*User, error) {
	parts := strings.SplitN(line, ":", 3)
	if len(parts) < 2 || parts[0] == "" {
		return nil, errors.New("want user:bcrypt-hash[:sender-pattern,...] (make one with `tlsrelay passwd USER`)")
	}
	if _, err := bcrypt.Cost([]byte(parts[1])); err != nil {
		return nil, fmt.Errorf("user %q: the password hash is not bcrypt: %v", parts[0], err)
	}
	u := &User{Name: parts[0], hash: []byte(parts[1])}
	if len(parts) == 3 && parts[2] != "" {
		for _, p := range strings.Split(parts[2], ",") {
			p = strings.ToLower(strings.TrimSpace(p))
			sp, err := ParseSenderPattern(p)
			if err != nil {
				return nil, fmt.Errorf("user %q: %w", parts[0], err)
			}
			u.Senders = append(u.Senders, p)
			u.senders = append(u.senders, sp)
		}
	}
	return u, nil
}

// Authenticate returns the user when name and password match.
func (db *DB) Authenticate(name, password string) (*User, bool) {
	u := db.users[name]
	if u == nil {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return nil, false
	}
	if bcrypt.CompareHashAndPassword(u.hash, []byte(password)) != nil {
		return nil, false
	}
	return u, true
}

// MayUse reports whether u may use from (the zero Address for the null
// sender <>) as the envelope sender.
func (u *User) MayUse(from address.Address) bool {
	if len(u.senders) == 0 {
		return true
	}
	for _, p := range u.senders {
		if p.Match(from) {
			return true
		}
	}
	return false
}

// MaySend is MayUse for a sender in its textual form ("" for <>), as
// address.Parse reads it; a sender that does not parse may not be used.
func (u *User) MaySend(from string) bool {
	var a address.Address
	if from != "" {
		var err error
		if a, err = address.Parse(from, true); err != nil {
			return false
		}
	}
	return u.MayUse(a)
}

// HashLine returns the auth_users_file line for a user.
func HashLine(name, password string, senders []string) (string, error) {
	if name == "" || strings.ContainsAny(name, ": \t") {
		return "", errors.New("the user name must be non-empty, without ':' or spaces")
	}
	if len(password) < 8 {
		return "", errors.New("use a password of at least 8 characters")
	}
	for _, p := range senders {
		if _, err := ParseSenderPattern(p); err != nil {
			return "", err
		}
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	line := name + ":" + string(h)
	if len(senders) > 0 {
		line += ":" + strings.Join(senders, ",")
	}
	return line, nil
}
