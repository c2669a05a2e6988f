// Package webpki makes the HTTPS clients of the relay's own requests —
// fetching MTA-STS policies, posting TLS-RPT reports — all under the same
// rules: the server verified under WebPKI roots (the system's, or a given
// pool) for the URL's host name, TLS 1.2 at least, no proxy, no redirect
// followed, no connection kept for later.
package webpki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
)

// Client returns a client for one exchange, and the function that
// releases its connections. dial connects to host:port (nil: net.Dialer);
// roots verify the server (nil: the system roots); a redirect fails the
// request with redirect, the caller's error for it.
func Client(dial func(ctx context.Context, network, addr string) (net.Conn, error), roots *x509.CertPool, redirect error) (*http.Client, func()) {
	tr := &http.Transport{
		Proxy:             nil,
		DialContext:       dial,
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return redirect }}, tr.CloseIdleConnections
}
