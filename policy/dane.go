package policy

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// tlsaMatches reports whether record r designates certificate c.
func tlsaMatches(r TLSA, c *x509.Certificate) bool {
	var data []byte
	switch r.Selector {
	case SelectorCert:
		data = c.Raw
	case SelectorSPKI:
		data = c.RawSubjectPublicKeyInfo
	default:
		return false
	}
	switch r.MatchingType {
	case MatchFull:
		return bytes.Equal(data, r.Data)
	case MatchSHA256:
		sum := sha256.Sum256(data)
		return bytes.Equal(sum[:], r.Data)
	case MatchSHA512:
		sum := sha512.Sum512(data)
		return bytes.Equal(sum[:], r.Data)
	}
	return false
}

// TLSAFor returns the TLSA record (usage, selector 1, SHA-256) that
// designates c: what `tlsrelay check` shows and tests publish.
func TLSAFor(usage uint8, c *x509.Certificate) TLSA {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return TLSA{Usage: usage, Selector: SelectorSPKI, MatchingType: MatchSHA256, Data: sum[:]}
}

// daneChains authenticates the server by the host's TLSA records (RFC
// 7672 §3): a DANE-EE record matching the server's own certificate or
// key, whatever its names and dates; or a DANE-TA record matching a
// certificate the server sent, to which the server's certificate then
// verifies at now (dates checked) and which names the TLSA base domain,
// the MX host name or the recipient domain. Records that are not usable
// are ignored; when there is none usable, TLS is still required and the
// verdict is dane_unusable. It returns the chains that passed.
func (v *verifier) daneChains(sent []*x509.Certificate, now time.Time) ([][]*x509.Certificate, *Failure) {
	h := v.dest.mx
	var usable []TLSA
	for _, r := range h.TLSA {
		if r.Usable() {
			usable = append(usable, r)
		}
	}
	if len(usable) == 0 {
		return nil, v.fail(DANEUnusable,
			fmt.Sprintf("%s has %d DNSSEC-validated TLSA record(s), none usable for SMTP (RFC 7672 allows only usages 2 and 3, selectors 0 and 1, matching types 0, 1 and 2): %s",
				h.TLSAName, len(h.TLSA), tlsaList(h.TLSA)),
			"the domain's operator must publish a usable TLSA record, e.g. \"3 1 1 <SHA-256 of the server's public key>\"; until then its mail waits (TLS stays mandatory)", nil)
	}
	for _, r := range usable {
		if r.Usage == UsageDANEEE && tlsaMatches(r, sent[0]) {
			chain := []*x509.Certificate{sent[0]}
			if weak := v.weakLinks(chain); len(weak) > 0 {
				return nil, weak[0]
			}
			return [][]*x509.Certificate{chain}, nil
		}
	}
	var taFail *Failure
	for _, r := range usable {
		if r.Usage != UsageDANETA {
			continue
		}
		for _, anchor := range sent {
			if !tlsaMatches(r, anchor) {
				continue
			}
			chains, f := v.toAnchor(sent, anchor, now)
			if f == nil {
				return chains, nil
			}
			if taFail == nil {
				taFail = f
			}
		}
	}
	if taFail != nil {
		return nil, taFail
	}
	return nil, v.fail(DANEMismatch,
		fmt.Sprintf("no TLSA record at %s matches the certificate chain the server sent (records: %s; the server's certificate %q has the DANE-EE record \"%s\")",
			h.TLSAName, tlsaList(usable), sent[0].Subject, TLSAFor(UsageDANEEE, sent[0])),
		"the server's certificate or key changed without its TLSA records being updated (publish the new record first, then change the certificate), or something between here and there presents another certificate", nil)
}

// toAnchor verifies the server's certificate to a DANE-TA anchor it sent,
// and its names.
func (v *verifier) toAnchor(sent []*x509.Certificate, anchor *x509.Certificate, now time.Time) ([][]*x509.Certificate, *Failure) {
	h := v.dest.mx
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(anchor)
	for _, c := range sent[1:] {
		if c != anchor {
			inter.AddCert(c)
		}
	}
	all, err := sent[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			c := inv.Cert
			class := Expired
			if now.Before(c.NotBefore) {
				class = NotYetValid
			}
			return nil, v.timeFailure(class, c, c == sent[0], now, err)
		}
		return nil, v.fail(DANEMismatch,
			fmt.Sprintf("the DANE-TA record at %s matches %q, but the server's certificate does not verify to it: %v", h.TLSAName, anchor.Subject, err),
			"the server must send its certificate with the chain up to the certificate its DANE-TA record designates", err)
	}
	var strong [][]*x509.Certificate
	var weak *Failure
	for _, chain := range all {
		if w := v.weakLinks(chain); len(w) > 0 {
			weak = w[0]
			continue
		}
		strong = append(strong, chain)
	}
	if len(strong) == 0 {
		return nil, weak
	}
	for _, name := range v.dest.RequireHostname {
		if sent[0].VerifyHostname(name) == nil {
			return strong, nil
		}
	}
	f := v.fail(DANEMismatch,
		fmt.Sprintf("the chain verifies to the DANE-TA anchor %q, but the certificate is valid for %s, not %s", anchor.Subject, quoteList(certNames(sent[0])), quoteList(v.dest.RequireHostname)),
		"the server's certificate must name the MX host (or the recipient domain) when it is authenticated by a DANE-TA record; or publish a DANE-EE record for its key", nil)
	f.Result = ResultCertHostMismatch
	return nil, f
}

func tlsaList(rs []TLSA) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = fmt.Sprintf("%q", r.String())
	}
	return strings.Join(s, ", ")
}
