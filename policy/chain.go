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

	if f := v.ruleFailure(path, err); f != nil {
		return f
	}

	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.IncompatibleUsage:
			return v.fail(Handshake, fmt.Sprintf("certificate %q is not valid for TLS server authentication (extended key usage)", invalid.Cert.Subject),
				"reissue the server certificate with the serverAuth extended key usage", err)
		case x509.CANotAuthorizedForThisName:
			return v.nameConstraintFailure(path, invalid, now, err)
		default:
			// The chain reaches a trusted CA but breaks a rule on the way
			// (certificate policies, constraint limits): not a trust problem.
			return v.fail(Handshake, fmt.Sprintf("the chain breaks a rule of RFC 5280: %v", err),
				"the server's certificate chain must be reissued so that it follows the rule named; trusting another CA does not help", err)
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

// ruleFailure finds, along the issuance path, a certificate crypto/x509
// refuses whatever the roots: one with a critical extension it does not
// understand, or an issuer that is not a CA. crypto/x509 reports these
// for a CA certificate only as a hint inside "unknown authority", so they
// are read from the certificates themselves. Nil when there is none.
func (v *verifier) ruleFailure(path []*x509.Certificate, err error) *Failure {
	for i, c := range path {
		if len(c.UnhandledCriticalExtensions) == 0 {
			continue
		}
		oids := make([]string, len(c.UnhandledCriticalExtensions))
		for j, oid := range c.UnhandledCriticalExtensions {
			oids[j] = oid.String()
		}
		fix := fmt.Sprintf("reissue the server certificate without the critical extension %s (or with it not marked critical); a client that does not understand a critical extension must refuse the certificate", strings.Join(oids, ", "))
		if i > 0 {
			fix = fmt.Sprintf("the CA certificate %q cannot be used by clients that do not understand %s: have the server send a chain through a CA certificate without it, or get a certificate from another CA", c.Subject, strings.Join(oids, ", "))
		}
		return v.fail(Handshake,
			fmt.Sprintf("the certificate %q carries a critical extension %s that this relay does not understand, so it is refused (RFC 5280)", c.Subject, strings.Join(oids, ", ")),
			fix, err)
	}
	for i := 1; i < len(path); i++ {
		c, child := path[i], path[i-1]
		notCA := c.Version == 3 && !c.BasicConstraintsValid || c.BasicConstraintsValid && !c.IsCA
		if notCA && c.CheckSignature(child.SignatureAlgorithm, child.RawTBSCertificate, child.Signature) == nil {
			return v.fail(Handshake,
				fmt.Sprintf("the certificate %q was signed by %q, which is not a CA certificate (basic constraints), so it may not issue certificates", child.Subject, c.Subject),
				"the server needs a certificate issued by a CA certificate; a server's own certificate cannot issue others", err)
		}
	}
	return nil
}

// nameConstraintFailure explains a chain refused by a CA's name
// constraints, naming the CA: the first one on the path whose constraints
// alone refuse the server's certificate.
func (v *verifier) nameConstraintFailure(path []*x509.Certificate, invalid x509.CertificateInvalidError, now time.Time, err error) *Failure {
	ca := "a CA in the chain"
	for i := 1; i < len(path); i++ {
		c := path[i]
		if !hasNameConstraints(c) {
			continue
		}
		roots, inter := x509.NewCertPool(), x509.NewCertPool()
		roots.AddCert(c)
		for _, p := range path[1:i] {
			inter.AddCert(p)
		}
		_, alone := path[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		var e x509.CertificateInvalidError
		if errors.As(alone, &e) && e.Reason == x509.CANotAuthorizedForThisName {
			ca = fmt.Sprintf("the CA %q", c.Subject)
			break
		}
	}
	return v.fail(Handshake,
		fmt.Sprintf("%s is not allowed to issue for the names of the server's certificate (name constraints): %s", ca, invalid.Detail),
		"get the server a certificate from a CA permitted to issue for its names, or have the CA's name constraints corrected; trusting another CA does not lift them", err)
}

func hasNameConstraints(c *x509.Certificate) bool {
	return len(c.PermittedDNSDomains)+len(c.ExcludedDNSDomains)+len(c.PermittedIPRanges)+len(c.ExcludedIPRanges)+
		len(c.PermittedEmailAddresses)+len(c.ExcludedEmailAddresses)+len(c.PermittedURIDomains)+len(c.ExcludedURIDomains) > 0
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
