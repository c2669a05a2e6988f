package policy

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"
)

// insecureSignatures are the signature algorithms crypto/x509 refuses.
var insecureSignatures = map[x509.SignatureAlgorithm]bool{
	x509.MD2WithRSA:    true,
	x509.MD5WithRSA:    true,
	x509.SHA1WithRSA:   true,
	x509.DSAWithSHA1:   true,
	x509.ECDSAWithSHA1: true,
}

// issuancePath follows issuer names from the leaf through the certificates
// the server sent and the policy's own CA certificates, the way a verifier
// would, and returns that path. It stops at a self-signed certificate or
// where no issuer is known. Names, not signatures, link the path, so that
// a certificate whose signature crypto/x509 refuses still shows up in it.
func issuancePath(sent, roots []*x509.Certificate) []*x509.Certificate {
	path := []*x509.Certificate{sent[0]}
	candidates := append(append([]*x509.Certificate{}, sent[1:]...), roots...)
	for cur := sent[0]; len(path) < 10 && !isSelfIssued(cur); {
		var next *x509.Certificate
		for _, c := range candidates {
			if bytes.Equal(cur.RawIssuer, c.RawSubject) && !containsCert(path, c) {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		path = append(path, next)
		cur = next
	}
	return path
}

func isSelfIssued(c *x509.Certificate) bool { return bytes.Equal(c.RawIssuer, c.RawSubject) }

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, l := range list {
		if l.Equal(c) {
			return true
		}
	}
	return false
}

func (v *verifier) isRoot(c *x509.Certificate) bool {
	return containsCert(v.dest.rootCerts, c)
}

// chainFailure turns a crypto/x509 verification error into a Failure.
// crypto/x509 reports an expired intermediate as "unknown authority" (the
// bad certificate is only a hint inside it) and folds expired and
// not-yet-valid into one reason, so the verdict comes from looking at the
// certificates themselves; the error only decides what is left.
func (v *verifier) chainFailure(err error, sent []*x509.Certificate, now time.Time) *Failure {
	path := issuancePath(sent, v.dest.rootCerts)
	host := v.dest.ServerName

	for i, c := range path {
		if insecureSignatures[c.SignatureAlgorithm] && !(i == len(path)-1 && isSelfIssued(c)) {
			return v.fail(InsecureAlgorithm,
				fmt.Sprintf("certificate %q is signed with %s, which is refused as insecure", c.Subject, c.SignatureAlgorithm),
				weakFix, err)
		}
	}
	var insecure x509.InsecureAlgorithmError
	if errors.As(err, &insecure) {
		return v.fail(InsecureAlgorithm, err.Error(), weakFix, err)
	}

	for i, c := range path {
		switch {
		case now.After(c.NotAfter):
			return v.timeFailure(Expired, c, i == 0, now, err)
		case now.Before(c.NotBefore):
			return v.timeFailure(NotYetValid, c, i == 0, now, err)
		}
	}

	var sysErr x509.SystemRootsError
	if errors.As(err, &sysErr) {
		return v.fail(UnknownAuthority, "this machine has no system root certificates to verify against",
			"install the ca-certificates package, or set ca_file to the CA that issued the server's certificate", err)
	}

	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.IncompatibleUsage:
			return v.fail(Handshake, fmt.Sprintf("certificate %q is not valid for TLS server authentication (extended key usage)", invalid.Cert.Subject),
				"reissue the server certificate with the serverAuth extended key usage", err)
		default:
			return v.fail(UnknownAuthority, fmt.Sprintf("the chain does not lead to a trusted CA: %v", err),
				v.authorityFix(), err)
		}
	}

	top := path[len(path)-1]
	if isSelfIssued(top) && !v.isRoot(top) {
		what := "is self-signed"
		if len(path) > 1 {
			what = fmt.Sprintf("chains to the self-signed %q", top.Subject)
		}
		return v.fail(UnknownAuthority,
			fmt.Sprintf("the certificate of %s %s, a CA this destination's policy does not trust", host, what),
			v.authorityFix(), err)
	}
	if !isSelfIssued(top) && len(top.IssuingCertificateURL) > 0 {
		return v.fail(IncompleteChain,
			fmt.Sprintf("the server sent %d certificate(s) but not the issuer of %q; missing issuer: %q (its certificate is published at %s)",
				len(sent), top.Subject, top.Issuer, strings.Join(top.IssuingCertificateURL, ", ")),
			fmt.Sprintf("the server must send the full chain (fullchain.pem, not cert.pem); missing issuer: %s", top.Issuer), err)
	}
	return v.fail(UnknownAuthority,
		fmt.Sprintf("the chain ends at %q, issued by %q, which this destination's policy does not trust", top.Subject, top.Issuer),
		v.authorityFix(), err)
}

func (v *verifier) authorityFix() string {
	if v.dest.CAFile != "" {
		return fmt.Sprintf("add the CA that issued the server's certificate to ca_file (%s), or have the server use a certificate from that CA", v.dest.CAFile)
	}
	return "set ca_file to the CA that issued the server's certificate (private CA), or get the server a certificate from a public CA"
}

// timeFailure explains a certificate outside its validity period. When the
// gap is small or the certificate is from the future, the local clock is as
// likely to be wrong as the certificate, so both times are shown.
func (v *verifier) timeFailure(class Class, c *x509.Certificate, leaf bool, now time.Time, err error) *Failure {
	which := fmt.Sprintf("the certificate %q", c.Subject)
	if !leaf {
		which = fmt.Sprintf("the CA certificate %q in the chain", c.Subject)
	}
	const day = "2006-01-02 15:04:05 UTC"
	var detail, fix string
	if class == Expired {
		detail = fmt.Sprintf("%s expired %s", which, c.NotAfter.UTC().Format(day))
		fix = fmt.Sprintf("renew the certificate on %s; it expired %s", v.dest.ServerName, c.NotAfter.UTC().Format(day))
		if !leaf {
			fix = fmt.Sprintf("the server on %s sends (or chains to) a CA certificate that expired %s: install its current chain from the CA (fullchain.pem), or renew with a current CA",
				v.dest.ServerName, c.NotAfter.UTC().Format(day))
		}
		if now.Sub(c.NotAfter) < 24*time.Hour {
			fix += fmt.Sprintf("; it expired less than a day ago, so also check this machine's clock (local time %s, certificate valid %s to %s)",
				now.UTC().Format(day), c.NotBefore.UTC().Format(day), c.NotAfter.UTC().Format(day))
		}
	} else {
		detail = fmt.Sprintf("%s is not valid before %s", which, c.NotBefore.UTC().Format(day))
		fix = fmt.Sprintf("check this machine's clock (NTP): local time is %s, the certificate is valid %s to %s; or the server's certificate was issued for a future date",
			now.UTC().Format(day), c.NotBefore.UTC().Format(day), c.NotAfter.UTC().Format(day))
	}
	return v.fail(class, detail, fix, err)
}
