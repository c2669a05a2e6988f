package policy

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"time"
)

// IssuerCheck is what fetching a leaf's AIA caIssuers URL showed.
type IssuerCheck struct {
	URL string `json:"url"`
	// Found: the URL served the certificate that issued the leaf.
	Found   bool   `json:"found"`
	Subject string `json:"subject,omitempty"`
	// Completes: with it, the chain verifies to this destination's roots;
	// so the server only needs to send it (incomplete_chain confirmed).
	Completes bool   `json:"completes_chain"`
	Problem   string `json:"problem,omitempty"`
}

// maxIssuerBytes bounds what is read from a caIssuers URL.
const maxIssuerBytes = 64 << 10

// FetchMissingIssuer confirms an incomplete_chain diagnosis: it fetches
// the leaf's caIssuers URL (plain HTTP, as RFC 5280 publishes them; bounded
// in time and size) and checks whether that certificate issued the leaf
// and completes the chain. It is used by `tlsrelay check` only, to explain;
// a chain is never trusted because of what this fetches, and delivery never
// fetches anything.
func (d *Destination) FetchMissingIssuer(ctx context.Context, sent []*x509.Certificate, clock Clock) *IssuerCheck {
	if len(sent) == 0 || len(sent[0].IssuingCertificateURL) == 0 {
		return nil
	}
	leaf := sent[0]
	ic := &IssuerCheck{URL: leaf.IssuingCertificateURL[0]}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ic.URL, nil)
	if err != nil {
		ic.Problem = err.Error()
		return ic
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ic.Problem = err.Error()
		return ic
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		ic.Problem = "HTTP " + resp.Status
		return ic
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerBytes))
	if err != nil {
		ic.Problem = err.Error()
		return ic
	}
	if b, _ := pem.Decode(raw); b != nil {
		raw = b.Bytes
	}
	issuer, err := x509.ParseCertificate(raw)
	if err != nil {
		ic.Problem = fmt.Sprintf("not a certificate: %v", err)
		return ic
	}
	ic.Subject = issuer.Subject.String()
	if leaf.CheckSignatureFrom(issuer) != nil {
		ic.Problem = "the certificate at that URL did not issue the server's certificate"
		return ic
	}
	ic.Found = true
	if clock == nil {
		clock = time.Now
	}
	opts := x509.VerifyOptions{Roots: d.Roots, Intermediates: x509.NewCertPool(), CurrentTime: clock(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, c := range append(sent[1:], issuer) {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err == nil {
		ic.Completes = true
	} else {
		ic.Problem = "even with it the chain does not verify: " + err.Error()
	}
	return ic
}
