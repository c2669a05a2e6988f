package tlsrpt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"tlsrelay/relay/webpki"
)

// ContentType is the media type of a gzip'ed report (RFC 8460 §6.4).
const ContentType = "application/tlsrpt+gzip"

// maxResponseBytes bounds what is read of a report server's answer.
const maxResponseBytes = 64 << 10

// Poster sends reports to https: rua URIs (RFC 8460 §3): a POST of the
// gzip'ed report, the server verified under the WebPKI, no redirect
// followed, within Timeout.
type Poster struct {
	// Dial connects to host:port; it resolves the name itself (the
	// relay's resolver). Nil: net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Roots verify the server; nil means the system roots.
	Roots *x509.CertPool
	// Timeout bounds one POST (default 60 s).
	Timeout time.Duration
}

// PostError is a report an https: rua did not take: the server's
// certificate did not verify (Untrusted), it could not be reached, or it
// answered other than 2xx (Status).
type PostError struct {
	URL       string
	Status    int // the HTTP status, 0 when there was none
	Untrusted bool
	Err       error
}

func (e *PostError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("POST to %s: HTTP %d, not 2xx: %v", e.URL, e.Status, e.Err)
	}
	return fmt.Sprintf("POST to %s: %v", e.URL, e.Err)
}

func (e *PostError) Unwrap() error { return e.Err }

var errNoRedirect = errors.New("the server answered with a redirect, which is not followed")

// Post sends the gzip'ed report gz to rua (an https: RUA). A 2xx answer
// is the report delivered; anything else is a *PostError.
func (p *Poster) Post(ctx context.Context, rua RUA, gz []byte) error {
	if rua.HTTPS == nil || rua.HTTPS.Scheme != "https" {
		return &PostError{URL: rua.URI, Err: errors.New("not an https: URI")}
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client, release := webpki.Client(p.Dial, p.Roots, errNoRedirect)
	defer release()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rua.HTTPS.String(), bytes.NewReader(gz))
	if err != nil {
		return &PostError{URL: rua.URI, Err: err}
	}
	req.Header.Set("Content-Type", ContentType)
	resp, err := client.Do(req)
	if err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			return &PostError{URL: rua.URI, Untrusted: true, Err: fmt.Errorf("the server's certificate does not verify: %w", cve.Err)}
		}
		return &PostError{URL: rua.URI, Err: err}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if resp.StatusCode/100 != 2 {
		if resp.StatusCode/100 == 3 {
			return &PostError{URL: rua.URI, Status: resp.StatusCode, Err: errNoRedirect}
		}
		return &PostError{URL: rua.URI, Status: resp.StatusCode, Err: fmt.Errorf("%.120q", bytes.TrimSpace(body))}
	}
	return nil
}
