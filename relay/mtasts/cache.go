package mtasts

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"tlsrelay/relay/durable"
)

// Cache keeps each domain's last policy on disk, one file per domain,
// each replaced atomically, so a policy outlives restarts and is there
// when a refetch fails (RFC 8461 §5.1).
type Cache struct {
	Dir string
}

// Cached is a cached policy.
type Cached struct {
	Domain  string
	ID      string
	Policy  *Policy
	Fetched time.Time
	// Expires is Fetched plus the policy's max_age.
	Expires time.Time
}

type cacheFile struct {
	Domain  string    `json:"domain"`
	ID      string    `json:"id"`
	Policy  string    `json:"policy"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`
}

func (c *Cache) path(domain string) (string, error) {
	if domain == "" || strings.ContainsAny(domain, `/\`) || strings.HasPrefix(domain, ".") {
		return "", fmt.Errorf("mtasts: %q is not a domain to cache", domain)
	}
	return filepath.Join(c.Dir, domain+".json"), nil
}

// Load returns domain's cached policy, expired or not; nil when there is
// none.
func (c *Cache) Load(domain string) (*Cached, error) {
	p, err := c.path(domain)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var f cacheFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %v", p, err)
	}
	pol, err := Parse([]byte(f.Policy))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", p, err)
	}
	return &Cached{Domain: f.Domain, ID: f.ID, Policy: pol, Fetched: f.Fetched, Expires: f.Expires}, nil
}

// Store replaces domain's cached policy, durably.
func (c *Cache) Store(e *Cached) error {
	p, err := c.path(e.Domain)
	if err != nil {
		return err
	}
	if err := durable.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(cacheFile{Domain: e.Domain, ID: e.ID, Policy: e.Policy.String(), Fetched: e.Fetched.UTC(), Expires: e.Expires.UTC()}, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(p, append(raw, '\n'), 0o600)
}
