package policy

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Clock returns the current time. Verification takes it as a parameter so
// tests can move time (libfaketime does not affect Go binaries).
type Clock func() time.Time

// minRSABits is the smallest RSA key tlsrelay accepts anywhere in a
// verified chain. crypto/x509 itself still accepts 1024-bit keys.
const minRSABits = 2048

// ClientConfig returns the tls.Config for connecting to d's upstream.
//
// This is the one place where InsecureSkipVerify is set: crypto/tls's
// built-in verification checks the chain and one DNS name against the
// system roots, but cannot check ".suffix" names, several acceptable
// names, SPKI pins or key sizes, and its errors cannot be told apart
// reliably. VerifyConnection below therefore performs the complete
// verification itself (chain to the policy's roots at clock(), names,
// pins, version, algorithms) and fails the handshake on any doubt.
// It also runs on resumed sessions, so resumption never skips it.
func (d *Destination) ClientConfig(clock Clock) *tls.Config {
	if clock == nil {
		clock = time.Now
	}
	v := &verifier{dest: d, clock: clock}
	cfg := &tls.Config{
		ServerName:         d.ServerName,
		MinVersion:         d.MinTLS,
		InsecureSkipVerify: true, // see VerifyConnection: full verification happens there
		VerifyConnection:   v.verify,
		Time:               clock,
		ClientSessionCache: d.sessions,
	}
	if d.ClientCert != nil {
		cfg.Certificates = []tls.Certificate{*d.ClientCert}
	}
	return cfg
}

// VerifyState re-runs the complete verification on an established
// connection's state. The upstream dialer calls it once more after the
// handshake as a belt-and-braces check that the connection it is about
// to use was verified under this exact policy. It returns the chains the
// connection verified by that pass every check (crypto/tls leaves
// ConnectionState.VerifiedChains empty, see ClientConfig): the pool bounds
// a connection's reuse by their earliest notAfter.
func (d *Destination) VerifyState(cs tls.ConnectionState, clock Clock) ([][]*x509.Certificate, error) {
	if clock == nil {
		clock = time.Now
	}
	if !cs.HandshakeComplete {
		return nil, &Failure{Class: Handshake, Host: d.Upstream, Detail: "the TLS handshake did not complete"}
	}
	return (&verifier{dest: d, clock: clock}).verifiedChains(cs)
}

type verifier struct {
	dest  *Destination
	clock Clock
}

func (v *verifier) fail(class Class, detail, fix string, err error) *Failure {
	return &Failure{Class: class, Host: v.dest.Upstream, Detail: detail, Fix: fix, Err: err}
}

func (v *verifier) verify(cs tls.ConnectionState) error {
	_, err := v.verifiedChains(cs)
	return err
}

// verifiedChains performs the complete verification and returns the
// chains that passed it.
func (v *verifier) verifiedChains(cs tls.ConnectionState) ([][]*x509.Certificate, error) {
	d := v.dest
	if cs.Version < d.MinTLS {
		return nil, v.fail(TLSVersion,
			fmt.Sprintf("the server negotiated %s but the policy requires at least %s", tls.VersionName(cs.Version), tls.VersionName(d.MinTLS)),
			"upgrade the server's TLS; tlsrelay will not go below min_tls", nil)
	}
	sent := cs.PeerCertificates
	if len(sent) == 0 {
		return nil, v.fail(Handshake, "the server sent no certificate", "configure a certificate on the server", nil)
	}
	vc, f := v.chains(sent, v.clock())
	if f != nil {
		return nil, f
	}
	if f := v.checkNames(sent[0]); f != nil {
		return nil, f
	}
	if f := v.checkPins(vc, sent[0]); f != nil {
		return nil, f
	}
	return vc.strong, nil
}

// verifiedChains are the chains by which the server's certificate verifies
// to the policy's roots, split into those that pass every check of
// tlsrelay's own and those that do not (with the first reason).
type verifiedChains struct {
	strong  [][]*x509.Certificate
	refused [][]*x509.Certificate
	why     []*Failure // why[i] is why refused[i] was refused
}

// chains verifies the server's certificates to the policy's roots at now
// and keeps apart the chains that pass every check of tlsrelay's own
// (signature algorithms, key sizes). Pins are looked for in the strong
// chains only, so a pinned key on a path tlsrelay refuses never vouches
// for a connection. Without a strong chain it returns the diagnosis of
// the refused chain with the fewest problems.
func (v *verifier) chains(sent []*x509.Certificate, now time.Time) (*verifiedChains, *Failure) {
	opts := x509.VerifyOptions{
		Roots:         v.dest.Roots, // nil: the system roots
		Intermediates: x509.NewCertPool(),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, c := range sent[1:] {
		opts.Intermediates.AddCert(c)
	}
	all, err := sent[0].Verify(opts)
	if err != nil {
		return nil, v.chainFailure(err, sent, now)
	}
	vc := &verifiedChains{}
	var best []*Failure // the problems of the refused chain with the fewest
	for _, chain := range all {
		problems := v.weakLinks(chain)
		if len(problems) == 0 {
			vc.strong = append(vc.strong, chain)
			continue
		}
		vc.refused, vc.why = append(vc.refused, chain), append(vc.why, problems[0])
		if best == nil || len(problems) < len(best) {
			best = problems
		}
	}
	if len(vc.strong) > 0 {
		return vc, nil
	}
	f := best[0]
	if len(all) > 1 {
		f.Detail += fmt.Sprintf(" (each of the %d paths to a trusted root has a link tlsrelay refuses; this is the best of them)", len(all))
	}
	return nil, f
}

// weakLinks lists what is refused in one verified chain: a key too small
// anywhere in it, or a signature with an insecure algorithm below its root
// (a root's self-signature proves nothing and is not judged).
func (v *verifier) weakLinks(chain []*x509.Certificate) []*Failure {
	var out []*Failure
	for i, c := range chain {
		if k, ok := c.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() < minRSABits {
			out = append(out, v.fail(InsecureAlgorithm,
				fmt.Sprintf("certificate %q has a %d-bit RSA key", c.Subject, k.N.BitLen()), weakFix, nil))
		}
		if i < len(chain)-1 && insecureSignatures[c.SignatureAlgorithm] {
			out = append(out, v.fail(InsecureAlgorithm,
				fmt.Sprintf("certificate %q is signed with %s, which is refused as insecure", c.Subject, c.SignatureAlgorithm), weakFix, nil))
		}
	}
	return out
}

// weakFix is the fix for every insecure_algorithm verdict.
const weakFix = "reissue the certificate with SHA-256 and an RSA key of at least 2048 bits, or ECDSA"

// checkNames checks the leaf against require_hostname: an exact name is
// matched the way crypto/x509 does (wildcards, IP SANs); ".example.com"
// accepts a certificate for any subdomain of example.com.
func (v *verifier) checkNames(leaf *x509.Certificate) *Failure {
	for _, want := range v.dest.RequireHostname {
		if strings.HasPrefix(want, ".") {
			for _, n := range leaf.DNSNames {
				n = strings.ToLower(strings.TrimPrefix(n, "*"))
				if strings.HasSuffix(n, want) && len(n) > len(want) || n == want {
					return nil
				}
			}
			continue
		}
		if leaf.VerifyHostname(want) == nil {
			return nil
		}
	}
	names := certNames(leaf)
	return v.fail(HostnameMismatch,
		fmt.Sprintf("the certificate is valid for %s, not %s", quoteList(names), quoteList(v.dest.RequireHostname)),
		"fix the server certificate (it must name the host you connect to), or set require_hostname to a name the certificate has if that name is right", nil)
}

// checkPins looks for a pinned key in the strong chains. A pinned key
// found only in a refused chain is reported as that chain's weakness: the
// pin vouches for a path tlsrelay does not accept.
func (v *verifier) checkPins(vc *verifiedChains, leaf *x509.Certificate) *Failure {
	if len(v.dest.Pins) == 0 {
		return nil
	}
	if pinnedChain(vc.strong, v.dest.Pins) >= 0 {
		return nil
	}
	if i := pinnedChain(vc.refused, v.dest.Pins); i >= 0 {
		why := vc.why[i]
		return v.fail(InsecureAlgorithm,
			"the pinned key is only on a path to the root that tlsrelay refuses: "+why.Detail,
			weakFix+"; or pin a key of a path that passes (e.g. the server's own key)", nil)
	}
	observed := SPKIPin(leaf)
	return v.fail(PinMismatch,
		fmt.Sprintf("the chain verified, but no key in it matches pin_sha256; the server's key pin is %s", observed),
		fmt.Sprintf("the server's key changed: after confirming the new key with its operator, set pin_sha256 = [%q]", observed), nil)
}

// pinnedChain returns the index of the first chain holding a pinned key,
// or -1.
func pinnedChain(chains [][]*x509.Certificate, pins []string) int {
	for i, chain := range chains {
		for _, c := range chain {
			if slices.Contains(pins, SPKIPin(c)) {
				return i
			}
		}
	}
	return -1
}

// certNames lists the names a certificate is valid for, as a person would.
func certNames(c *x509.Certificate) []string {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, "CN="+c.Subject.CommonName+" (no SANs; CN is not accepted)")
	}
	if len(names) == 0 {
		names = []string{"no names at all"}
	}
	return names
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// errAbortProbe stops a version probe's handshake once the version is known.
var errAbortProbe = errors.New("tlsrelay: version probe finished")

// VersionProbe returns a tls.Config that offers only TLS versions below
// the policy's minimum, and a function that, given the probe handshake's
// error, reports whether the server accepted one of them and which (0 when
// it is only known to be below the minimum). It is used after a failed
// handshake to tell "the server only speaks an old TLS" (tls_version) from
// other handshake failures, because servers differ in how they refuse a
// version: with an alert, or by simply closing. The probe's handshake is
// always aborted, so it never yields a connection anything is sent over.
func (d *Destination) VersionProbe() (*tls.Config, func(error) (bool, uint16)) {
	var got uint16
	cfg := &tls.Config{
		ServerName: d.ServerName,
		RootCAs:    d.Roots,
		MinVersion: tls.VersionTLS10,
		MaxVersion: d.MinTLS - 1,
		VerifyConnection: func(cs tls.ConnectionState) error {
			got = cs.Version
			return errAbortProbe
		},
	}
	// Old servers offer only CBC suites with SHA-1 MACs; offer them all here
	// so the probe learns the version, since nothing is sent over it.
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		cfg.CipherSuites = append(cfg.CipherSuites, s.ID)
	}
	return cfg, func(err error) (bool, uint16) {
		if errors.Is(err, errAbortProbe) {
			return true, got
		}
		// crypto/tls verifies the certificate only after the version was
		// agreed, so a certificate error still proves an old version works.
		var cve *tls.CertificateVerificationError
		return errors.As(err, &cve), 0
	}
}

// VersionFailure is the verdict when a probe showed that the server speaks
// only version got, below the policy's minimum.
func (d *Destination) VersionFailure(got uint16, cause error) *Failure {
	return &Failure{Class: TLSVersion, Host: d.Upstream, Err: cause,
		Detail: fmt.Sprintf("the server only speaks %s; the policy requires at least %s", versionBelow(got, d.MinTLS), tls.VersionName(d.MinTLS)),
		Fix:    fmt.Sprintf("upgrade the server to %s or later; until then this destination cannot be used", tls.VersionName(d.MinTLS))}
}

// HandshakeFailure classifies a TLS handshake error that did not come from
// verification (those are already *Failure values).
func (d *Destination) HandshakeFailure(err error) *Failure {
	if f, ok := AsFailure(err); ok {
		return f
	}
	return &Failure{Class: Handshake, Host: d.Upstream, Err: err,
		Detail: fmt.Sprintf("the TLS handshake failed: %v", err),
		Fix:    "check that the upstream speaks TLS on this port in the mode configured (tls = \"" + string(d.Mode) + "\"), with a cipher suite and version Go supports"}
}

func versionBelow(got, min uint16) string {
	if got != 0 {
		return tls.VersionName(got)
	}
	return "a TLS version older than " + tls.VersionName(min)
}
