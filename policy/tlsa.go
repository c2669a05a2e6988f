package policy

import (
	"encoding/hex"
	"fmt"
)

// TLSA is one TLSA record (RFC 6698): which certificate or key the
// server's chain must hold, for DANE (RFC 7672).
type TLSA struct {
	Usage        uint8 // 2 DANE-TA, 3 DANE-EE; 0 and 1 are unusable for SMTP
	Selector     uint8 // 0 the whole certificate, 1 its SubjectPublicKeyInfo
	MatchingType uint8 // 0 exact, 1 SHA-256, 2 SHA-512
	Data         []byte
}

// The TLSA parameters RFC 7672 lets SMTP use.
const (
	UsageDANETA    = 2
	UsageDANEEE    = 3
	SelectorCert   = 0
	SelectorSPKI   = 1
	MatchFull      = 0
	MatchSHA256    = 1
	MatchSHA512    = 2
	sha256Size     = 32
	sha512Size     = 64
	maxTLSADataLen = 65535
)

// String is the record as written in a zone: "3 1 1 ab12…".
func (t TLSA) String() string {
	return fmt.Sprintf("%d %d %d %s", t.Usage, t.Selector, t.MatchingType, hex.EncodeToString(t.Data))
}

// Usable reports whether SMTP may use the record (RFC 7672 §3.1): usage
// DANE-TA or DANE-EE, a known selector and matching type, and a digest of
// the right length. A record that is not usable is ignored; a TLSA set
// with records but none usable still makes TLS mandatory.
func (t TLSA) Usable() bool {
	if t.Usage != UsageDANETA && t.Usage != UsageDANEEE {
		return false
	}
	if t.Selector != SelectorCert && t.Selector != SelectorSPKI {
		return false
	}
	switch t.MatchingType {
	case MatchFull:
		return len(t.Data) > 0 && len(t.Data) <= maxTLSADataLen
	case MatchSHA256:
		return len(t.Data) == sha256Size
	case MatchSHA512:
		return len(t.Data) == sha512Size
	}
	return false
}
