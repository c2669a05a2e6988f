package oauth

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/durable"
)

// Registry keeps one Source per OAuth destination for the life of the
// process. A reload that leaves a destination's OAuth settings unchanged
// keeps its Source (and cached token); a changed one gets a new Source.
// After every token request it records the sources' Status in a file, so
// `tlsrelay oauth status` can show them.
type Registry struct {
	// StatusFile, if set, receives the status of every source (JSON).
	StatusFile string
	// Observe, if set, is told the result of every token request.
	Observe func(destination, result string)

	mu      sync.Mutex
	sources map[string]*entry // by destination name
	fileMu  sync.Mutex
}

type entry struct {
	key string
	src *Source
}

// NewRegistry returns an empty registry writing its status to statusFile
// ("" for none).
func NewRegistry(statusFile string) *Registry {
	return &Registry{StatusFile: statusFile, sources: map[string]*entry{}}
}

// StatusFileIn is where a relay with spool directory dir records token status.
func StatusFileIn(dir string) string { return filepath.Join(dir, "oauth-status.json") }

// Source returns the shared Source of destination d, or nil if d does not
// use OAuth.
func (r *Registry) Source(d *policy.Destination) *Source {
	if d.OAuth == nil {
		return nil
	}
	key := Fingerprint(d.OAuth)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.sources[d.Name()]; e != nil && e.key == key {
		return e.src
	}
	src := NewSource(d.Name(), d.OAuth)
	src.observe = func(result string, st Status) {
		if r.Observe != nil {
			r.Observe(st.Destination, result)
		}
		r.writeStatus()
	}
	r.sources[d.Name()] = &entry{key: key, src: src}
	return src
}

// Expiries returns each destination's current token expiry.
func (r *Registry) Expiries() map[string]time.Time {
	out := map[string]time.Time{}
	for _, st := range r.Statuses() {
		if !st.Expiry.IsZero() {
			out[st.Destination] = st.Expiry
		}
	}
	return out
}

// Statuses returns every source's status, by destination name.
func (r *Registry) Statuses() []Status {
	r.mu.Lock()
	srcs := make([]*Source, 0, len(r.sources))
	for _, e := range r.sources {
		srcs = append(srcs, e.src)
	}
	r.mu.Unlock()
	out := make([]Status, 0, len(srcs))
	for _, s := range srcs {
		out = append(out, s.Status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	return out
}

// StatusReport is the content of the status file.
type StatusReport struct {
	Written      time.Time `json:"written"`
	PID          int       `json:"pid"`
	Destinations []Status  `json:"destinations"`
}

func (r *Registry) writeStatus() {
	if r.StatusFile == "" {
		return
	}
	r.fileMu.Lock()
	defer r.fileMu.Unlock()
	raw, err := json.MarshalIndent(StatusReport{Written: time.Now().UTC(), PID: os.Getpid(), Destinations: r.Statuses()}, "", "  ")
	if err != nil {
		return
	}
	durable.WriteFile(r.StatusFile, raw, 0o600) // best effort: status is informative
}

// ReadStatus reads a status file written by a relay.
func ReadStatus(path string) (*StatusReport, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep StatusReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// Fingerprint identifies what a token source is made from (secrets
// included, as a hash): two compiled configurations with the same
// fingerprint get the same tokens. nil has the fingerprint "".
func Fingerprint(c *policy.OAuth) string {
	if c == nil {
		return ""
	}
	h := sha256.New()
	parts := []string{c.Provider, string(c.Flow), c.Mailbox, c.Tenant, c.ClientID, c.ClientSecret.Reveal(),
		c.TokenURL, strings.Join(c.Scopes, " "), c.RefreshTokenFile, c.CAFile}
	if c.ClientCert != nil {
		parts = append(parts, string(c.ClientCert.Cert.Raw), c.ClientCert.Key().D.String())
	}
	for _, cert := range c.CACerts {
		parts = append(parts, string(cert.Raw))
	}
	if c.ServiceAccount != nil {
		parts = append(parts, c.ServiceAccount.File, c.ServiceAccount.PrivateKey.Reveal())
	}
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}
