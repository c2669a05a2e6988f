// Package signing adds DKIM signatures (RFC 6376) to accepted messages
// whose author domain has a key, for legacy applications that cannot sign
// themselves. It signs the exact bytes the relay will send.
package signing

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/mail"
	"os"
	"slices"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// Spec is one [[dkim]] table.
type Spec struct {
	Domain         string   `toml:"domain"`
	Selector       string   `toml:"selector"`
	PrivateKeyFile string   `toml:"private_key_file"`
	Headers        []string `toml:"headers"`
	// Subdomains also signs mail whose From: domain is a subdomain of
	// Domain (with d=Domain, which DMARC's relaxed alignment accepts).
	Subdomains bool `toml:"subdomains"`
}

// DefaultHeaders are signed when a [[dkim]] entry names none: the fields
// RFC 6376 section 5.4.1 recommends, the ones a forger would change.
var DefaultHeaders = []string{"From", "Reply-To", "Subject", "Date", "To", "Cc", "Resent-Date", "Resent-From",
	"Resent-To", "Resent-Cc", "In-Reply-To", "References", "Message-ID", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"}

type key struct {
	spec   Spec
	signer crypto.Signer
}

// Signer holds the keys of every [[dkim]] entry.
type Signer struct {
	keys []key
}

// Load reads and checks the keys: RSA of at least 2048 bits or Ed25519,
// PEM-encoded (PKCS #8, or PKCS #1 for RSA). DKIM has no ECDSA.
func Load(specs []Spec) (*Signer, error) {
	s := &Signer{}
	seen := map[string]bool{}
	for i, sp := range specs {
		where := fmt.Sprintf("dkim[%d]", i+1)
		sp.Domain = strings.ToLower(strings.TrimSuffix(sp.Domain, "."))
		if sp.Domain == "" || sp.Selector == "" || sp.PrivateKeyFile == "" {
			return nil, fmt.Errorf("%s: domain, selector and private_key_file are required", where)
		}
		if seen[sp.Domain] {
			return nil, fmt.Errorf("%s: domain %q has two [[dkim]] entries; keep one", where, sp.Domain)
		}
		seen[sp.Domain] = true
		k, err := loadKey(sp.PrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.private_key_file: %s: %v", where, sp.PrivateKeyFile, err)
		}
		if len(sp.Headers) == 0 {
			sp.Headers = DefaultHeaders
		}
		hasFrom := false
		for _, h := range sp.Headers {
			hasFrom = hasFrom || strings.EqualFold(h, "From")
		}
		if !hasFrom {
			return nil, fmt.Errorf("%s.headers: must include \"From\" (RFC 6376 requires it)", where)
		}
		s.keys = append(s.keys, key{spec: sp, signer: k})
	}
	return s, nil
}

func loadKey(path string) (crypto.Signer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, fmt.Errorf("no PEM block found")
	}
	var k any
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key (want PRIVATE KEY or RSA PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("the RSA key has %d bits; DKIM keys need at least 2048 (RFC 8301)", k.N.BitLen())
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("a %T key cannot sign DKIM; use RSA (>= 2048 bits) or Ed25519", k)
}

// keyFor returns the key that signs mail from domain, if any: the entry
// for the domain itself, else for its nearest parent with subdomains set.
func (s *Signer) keyFor(domain string) *key {
	domain = strings.ToLower(domain)
	var best *key
	for i := range s.keys {
		k := &s.keys[i]
		d := k.spec.Domain
		if d == domain {
			return k
		}
		if k.spec.Subdomains && strings.HasSuffix(domain, "."+d) && (best == nil || len(d) > len(best.spec.Domain)) {
			best = k
		}
	}
	return best
}

// Sign returns the DKIM-Signature header field (with its CRLF) to put
// before msg, and the signing domain, or "" when no entry covers the
// From: domain or the message already carries a signature for that
// domain. headers is the message's header section, msg the whole message
// as it will be sent; extra names header fields to sign beyond the
// entry's (the relay's own mail: a TLS-RPT report's fields).
func (s *Signer) Sign(headers []byte, msg io.Reader, extra ...string) (string, string, error) {
	if s == nil || len(s.keys) == 0 {
		return "", "", nil
	}
	m, err := mail.ReadMessage(bytes.NewReader(append(append([]byte{}, headers...), "\r\n"...)))
	if err != nil {
		return "", "", nil // not a message we can read a From: from; leave it alone
	}
	from, err := mail.ParseAddressList(m.Header.Get("From"))
	if err != nil || len(from) == 0 {
		return "", "", nil
	}
	domain := from[0].Address[strings.LastIndexByte(from[0].Address, '@')+1:]
	k := s.keyFor(domain)
	if k == nil || alreadySigned(m.Header["Dkim-Signature"], k.spec.Domain) {
		return "", "", nil
	}
	signer, err := dkim.NewSigner(&dkim.SignOptions{
		Domain: k.spec.Domain, Selector: k.spec.Selector, Signer: k.signer, Hash: crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
		HeaderKeys: withExtra(k.spec.Headers, extra),
	})
	if err != nil {
		return "", "", err
	}
	if _, err := io.Copy(signer, msg); err != nil {
		signer.Close()
		return "", "", err
	}
	if err := signer.Close(); err != nil {
		return "", "", err
	}
	return signer.Signature(), k.spec.Domain, nil
}

// withExtra is keys followed by those of extra it does not name already
// (header names compare case-insensitively).
func withExtra(keys, extra []string) []string {
	out := keys[:len(keys):len(keys)]
	for _, e := range extra {
		if !slices.ContainsFunc(out, func(k string) bool { return strings.EqualFold(k, e) }) {
			out = append(out, e)
		}
	}
	return out
}

// alreadySigned reports whether one of the DKIM-Signature fields has d=domain.
func alreadySigned(fields []string, domain string) bool {
	for _, f := range fields {
		for _, tag := range strings.Split(f, ";") {
			name, value, ok := strings.Cut(strings.TrimSpace(tag), "=")
			if ok && strings.TrimSpace(name) == "d" && strings.EqualFold(strings.Join(strings.Fields(value), ""), domain) {
				return true
			}
		}
	}
	return false
}
