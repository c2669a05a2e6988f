package policy

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// CertInfo describes one certificate for a person reading `tlsrelay check`.
type CertInfo struct {
	Subject            string    `json:"subject"`
	Issuer             string    `json:"issuer"`
	Names              []string  `json:"names"`
	NotBefore          time.Time `json:"not_before"`
	NotAfter           time.Time `json:"not_after"`
	DaysLeft           int       `json:"days_left"`
	PinSHA256          string    `json:"pin_sha256"`
	SignatureAlgorithm string    `json:"signature_algorithm"`
	PublicKey          string    `json:"public_key"`
	IsCA               bool      `json:"is_ca"`
}

// Inspection is every verdict on a TLS connection, each judged on its own
// (verification stops at the first failure; a person fixing a server wants
// to know all of them).
type Inspection struct {
	Version      string     `json:"tls_version"`
	CipherSuite  string     `json:"cipher_suite"`
	Certificates []CertInfo `json:"certificates"`

	ChainVerified bool   `json:"chain_verified"`
	ChainRoot     string `json:"chain_root,omitempty"` // the trusted root the chain leads to
	ChainSource   string `json:"chain_source"`         // "ca_file PATH" or "system roots"
	ChainProblem  string `json:"chain_problem,omitempty"`
	ChainClass    Class  `json:"chain_class,omitempty"`

	HostnameWanted []string `json:"hostname_wanted"`
	HostnameOK     bool     `json:"hostname_ok"`

	PinsConfigured []string `json:"pins_configured,omitempty"`
	PinOK          *bool    `json:"pin_ok,omitempty"` // nil: no pins configured

	// Failure is the verdict of the complete verification, as delivery
	// would see it; nil means mail would be sent.
	Failure *Failure `json:"-"`
	// Sent are the certificates as the server sent them.
	Sent []*x509.Certificate `json:"-"`
	// MissingIssuer is filled in by the check command for incomplete_chain.
	MissingIssuer *IssuerCheck `json:"missing_issuer,omitempty"`
}

// Inspect judges a connection state under d's policy at clock().
func (d *Destination) Inspect(cs tls.ConnectionState, clock Clock) *Inspection {
	if clock == nil {
		clock = time.Now
	}
	now := clock()
	in := &Inspection{
		Version:        tls.VersionName(cs.Version),
		CipherSuite:    tls.CipherSuiteName(cs.CipherSuite),
		HostnameWanted: d.RequireHostname,
		Sent:           cs.PeerCertificates,
		PinsConfigured: d.Pins,
		ChainSource:    "system roots",
	}
	if d.CAFile != "" {
		in.ChainSource = "ca_file " + d.CAFile
	}
	for _, c := range cs.PeerCertificates {
		in.Certificates = append(in.Certificates, describeCert(c, now))
	}
	v := &verifier{dest: d, clock: clock}
	if err := v.verify(cs); err != nil {
		in.Failure, _ = AsFailure(err)
	}
	if len(cs.PeerCertificates) == 0 {
		return in
	}
	leaf := cs.PeerCertificates[0]
	in.HostnameOK = v.checkNames(leaf) == nil

	vc, f := v.chains(cs.PeerCertificates, now)
	if f != nil {
		in.ChainProblem, in.ChainClass = f.Detail, f.Class
	} else {
		in.ChainVerified = true
		in.ChainRoot = vc.strong[0][len(vc.strong[0])-1].Subject.String()
		if len(d.Pins) > 0 {
			ok := v.checkPins(vc, leaf) == nil
			in.PinOK = &ok
		}
	}
	return in
}

func describeCert(c *x509.Certificate, now time.Time) CertInfo {
	return CertInfo{
		Subject:            c.Subject.String(),
		Issuer:             c.Issuer.String(),
		Names:              slices.Clone(certNames(c)),
		NotBefore:          c.NotBefore.UTC(),
		NotAfter:           c.NotAfter.UTC(),
		DaysLeft:           int(c.NotAfter.Sub(now).Hours() / 24),
		PinSHA256:          SPKIPin(c),
		SignatureAlgorithm: c.SignatureAlgorithm.String(),
		PublicKey:          describeKey(c.PublicKey),
		IsCA:               c.IsCA,
	}
}

func describeKey(k any) string {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d bits", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", k)
}
