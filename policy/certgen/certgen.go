// Package certgen makes throwaway certificate authorities and certificates
// for the demo, the tests and the benchmark tool: a real CA, real leaves,
// and on request the broken ones (expired, not yet valid, wrong name,
// SHA-1, missing intermediate, cross-signed, name-constrained, unknown
// critical extension) that tlsrelay must refuse or must see through.
package certgen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"time"
)

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Options shape an issued certificate. The zero value gives a one-year
// ECDSA P-256 leaf, valid from an hour ago.
type Options struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	NotBefore  time.Time
	NotAfter   time.Time
	// IsCA issues an intermediate CA instead of a leaf.
	IsCA bool
	// RSABits, when set, gives an RSA key of that size instead of ECDSA.
	RSABits int
	// SignatureAlgorithm, when set, overrides the issuer's default.
	SignatureAlgorithm x509.SignatureAlgorithm
	// IssuingCertificateURL is the AIA caIssuers URL.
	IssuingCertificateURL []string
	// Key, when set, is certified instead of a fresh key: issuing a CA
	// with the Key and name of another CA cross-signs that CA.
	Key crypto.Signer
	// PermittedDNSDomains and ExcludedDNSDomains are name constraints (for
	// a CA).
	PermittedDNSDomains, ExcludedDNSDomains []string
	// ExtraExtensions are added verbatim (e.g. an unknown critical one).
	ExtraExtensions []pkix.Extension
}

// NewCA makes a self-signed root CA.
func NewCA(name string) (*CA, error) {
	return newCA(name, Options{})
}

func newCA(name string, o Options) (*CA, error) {
	key, err := newKey(o.RSABits)
	if err != nil {
		return nil, err
	}
	tmpl := template(Options{CommonName: name, IsCA: true, NotBefore: o.NotBefore, NotAfter: o.NotAfter})
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// NewCAWithValidity makes a root CA valid only between notBefore and notAfter.
func NewCAWithValidity(name string, notBefore, notAfter time.Time) (*CA, error) {
	return newCA(name, Options{NotBefore: notBefore, NotAfter: notAfter})
}

// Issued is a certificate with its key, and the chain above it up to (not
// including) the root.
type Issued struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// Issue signs a certificate as o describes.
func (ca *CA) Issue(o Options) (*Issued, error) {
	key := o.Key
	if key == nil {
		var err error
		if key, err = newKey(o.RSABits); err != nil {
			return nil, err
		}
	}
	tmpl := template(o)
	if o.SignatureAlgorithm != 0 {
		tmpl.SignatureAlgorithm = o.SignatureAlgorithm
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, Key: key}, nil
}

// Intermediate issues an intermediate CA under ca.
func (ca *CA) Intermediate(name string, o Options) (*CA, *Issued, error) {
	o.CommonName, o.IsCA = name, true
	iss, err := ca.Issue(o)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: iss.Cert, Key: iss.Key}, iss, nil
}

// TLSCertificate returns the certificate for a tls.Config, sending the leaf
// followed by the chain given (intermediates the server should present).
func (i *Issued) TLSCertificate(chain ...*x509.Certificate) tls.Certificate {
	c := tls.Certificate{Certificate: [][]byte{i.Cert.Raw}, PrivateKey: i.Key, Leaf: i.Cert}
	for _, ch := range chain {
		c.Certificate = append(c.Certificate, ch.Raw)
	}
	return c
}

// CertPEM returns the PEM encoding of a certificate.
func CertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// KeyPEM returns the PEM (PKCS #8) encoding of a private key.
func KeyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteCertFile writes certificates as PEM to path, readable by the owner.
func WriteCertFile(path string, certs ...*x509.Certificate) error {
	var out []byte
	for _, c := range certs {
		out = append(out, CertPEM(c)...)
	}
	return os.WriteFile(path, out, 0o600)
}

func newKey(rsaBits int) (crypto.Signer, error) {
	if rsaBits > 0 {
		return rsa.GenerateKey(rand.Reader, rsaBits)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func template(o Options) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	nb, na := o.NotBefore, o.NotAfter
	if nb.IsZero() {
		nb = time.Now().Add(-time.Hour)
	}
	if na.IsZero() {
		na = nb.Add(366 * 24 * time.Hour)
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CommonName, Organization: []string{"tlsrelay test"}},
		NotBefore:             nb,
		NotAfter:              na,
		DNSNames:              o.DNSNames,
		IPAddresses:           o.IPs,
		IssuingCertificateURL: o.IssuingCertificateURL,
		PermittedDNSDomains:   o.PermittedDNSDomains,
		ExcludedDNSDomains:    o.ExcludedDNSDomains,
		ExtraExtensions:       o.ExtraExtensions,
		BasicConstraintsValid: true,
	}
	if o.IsCA {
		t.IsCA = true
		t.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	} else {
		t.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	return t
}

// SPKIPinOf returns a certificate's pin in pin_sha256 form (the base64
// SHA-256 of its SubjectPublicKeyInfo).
func SPKIPinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}
