package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/webpki"
)

// MaxPolicyBytes caps a policy file (RFC 8461 §3.3 suggests 64 KiB).
const MaxPolicyBytes = 64 << 10

// Fetcher fetches policies from https://mta-sts.<domain>/.well-known/mta-sts.txt.
type Fetcher struct {
	// Dial connects to host:port (host is mta-sts.<domain>); it must
	// resolve the name itself (MX delivery resolves through its own
	// resolver, never the system's).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Roots verify the server (WebPKI); nil means the system roots.
	Roots *x509.CertPool
	// Timeout bounds one fetch (default 30 s).
	Timeout time.Duration
}

// FetchError is a policy that could not be had. Result is its TLS-RPT
// result type: sts-webpki-invalid when the HTTPS server's certificate did
// not verify, sts-policy-invalid when the file is not a valid policy,
// sts-policy-fetch-error otherwise.
type FetchError struct {
	Domain string
	Result policy.ResultType
	Err    error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("MTA-STS policy of %s: %v", e.Domain, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// URL is where a domain's policy is published.
func URL(domain string) string { return "https://mta-sts." + domain + "/.well-known/mta-sts.txt" }

// errRedirect refuses a redirect (RFC 8461 §3.3: not followed).
var errRedirect = errors.New("the server answered with a redirect, which MTA-STS does not follow")

// Fetch gets and parses domain's policy: HTTPS verified for
// mta-sts.<domain>, 200 only, no redirect, no proxy, the body at most
// MaxPolicyBytes, within Timeout.
func (f *Fetcher) Fetch(ctx context.Context, domain string) (*Policy, error) {
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client, release := webpki.Client(f.Dial, f.Roots, errRedirect)
	defer release()
	fail := func(r policy.ResultType, err error) error { return &FetchError{Domain: domain, Result: r, Err: err} }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, URL(domain), nil)
	if err != nil {
		return nil, fail(policy.ResultSTSFetchError, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		var cve *tls.CertificateVerificationError
		switch {
		case errors.As(err, &cve):
			return nil, fail(policy.ResultSTSWebPKIInvalid, fmt.Errorf("the certificate of mta-sts.%s does not verify: %w", domain, cve.Err))
		case errors.Is(err, errRedirect):
			return nil, fail(policy.ResultSTSFetchError, errRedirect)
		}
		return nil, fail(policy.ResultSTSFetchError, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode/100 == 3 {
			return nil, fail(policy.ResultSTSFetchError, fmt.Errorf("%w (HTTP %d to %.200q)", errRedirect, resp.StatusCode, loc))
		}
		return nil, fail(policy.ResultSTSFetchError, fmt.Errorf("HTTP %d, not 200", resp.StatusCode))
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, fail(policy.ResultSTSPolicyInvalid, fmt.Errorf("Content-Type %.80q, not text/plain", resp.Header.Get("Content-Type")))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicyBytes+1))
	if err != nil {
		return nil, fail(policy.ResultSTSFetchError, err)
	}
	if len(body) > MaxPolicyBytes {
		return nil, fail(policy.ResultSTSPolicyInvalid, fmt.Errorf("the policy is larger than %d bytes", MaxPolicyBytes))
	}
	p, err := Parse(body)
	if err != nil {
		return nil, fail(policy.ResultSTSPolicyInvalid, err)
	}
	return p, nil
}
