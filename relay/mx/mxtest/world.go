// Package mxtest is a small internet on loopback for tests of delivery to
// mail exchangers: a DNS server with signed and unsigned zones
// (dnstest), STARTTLS servers standing in for MX hosts on port 25 of
// their own 127.0.0.x addresses (sink), and one HTTPS server answering
// for every mta-sts.<domain>, all under a test CA (the WebPKI of this
// world, which a destination names in ca_file). Dial maps the addresses
// names resolve to onto those servers; nothing leaves loopback.
package mxtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/dnsx/dnstest"
	"tlsrelay/relay/sink"
)

// World is the test internet.
type World struct {
	t      testing.TB
	DNS    *dnstest.Server
	CA     *certgen.CA
	CAFile string

	mu       sync.Mutex
	routes   map[string]string // "127.0.0.x:25" or ":443" → the real listener
	nextIP   int
	policies map[string]string // mta-sts.<domain> → policy body, or "redirect"
	https    *httptest.Server
	certs    map[string]*tls.Certificate
}

// New starts a World; everything stops when the test ends.
func New(t testing.TB) *World {
	t.Helper()
	dns, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	ca, err := certgen.NewCA("MX World CA")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		t.Fatal(err)
	}
	w := &World{t: t, DNS: dns, CA: ca, CAFile: caFile, routes: map[string]string{}, nextIP: 10,
		policies: map[string]string{}, certs: map[string]*tls.Certificate{}}
	w.https = httptest.NewUnstartedServer(http.HandlerFunc(w.servePolicy))
	w.https.TLS = &tls.Config{GetCertificate: w.certificate}
	w.https.Config.ErrorLog = log.New(io.Discard, "", 0)
	w.https.StartTLS()
	t.Cleanup(w.https.Close)
	return w
}

// Leaf issues a certificate for names under the World's CA.
func (w *World) Leaf(names ...string) *certgen.Issued {
	w.t.Helper()
	iss, err := w.CA.Issue(certgen.Options{CommonName: names[0], DNSNames: names})
	if err != nil {
		w.t.Fatal(err)
	}
	return iss
}

func (w *World) ip() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.nextIP++
	return fmt.Sprintf("127.0.0.%d", w.nextIP)
}

// Dial is the dialer to give the relay (Options.MXDial): the address a
// name resolved to, mapped to the server standing in for it.
func (w *World) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	w.mu.Lock()
	real, ok := w.routes[addr]
	w.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("mxtest: nothing listens on %s", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, real)
}

// Host starts an MX host named name (with o.Cert, or else a certificate
// of the World's CA for name) and publishes its address record.
func (w *World) Host(name string, o sink.Options) *sink.Sink {
	w.t.Helper()
	if o.Cert.Certificate == nil {
		o.Cert = w.Leaf(name).TLSCertificate()
	}
	if o.Hostname == "" {
		o.Hostname = name
	}
	s, err := sink.Start(o)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { s.Close() })
	ip := w.ip()
	w.mu.Lock()
	w.routes[ip+":25"] = s.Addr()
	w.mu.Unlock()
	w.DNS.MustAdd(name + ". A " + ip)
	return s
}

// STS publishes an MTA-STS policy for domain under id: the TXT record,
// the address of mta-sts.<domain>, and the policy file (body "redirect":
// the policy URL answers with a redirect).
func (w *World) STS(domain, id, body string) {
	ip := w.ip()
	w.mu.Lock()
	w.routes[ip+":443"] = w.https.Listener.Addr().String()
	w.policies["mta-sts."+domain] = body
	w.mu.Unlock()
	w.DNS.MustAdd("mta-sts."+domain+". A "+ip, "_mta-sts."+domain+`. TXT "v=STSv1; id=`+id+`"`)
}

// SetPolicy replaces the policy file served for domain, its TXT record
// left as it is.
func (w *World) SetPolicy(domain, body string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.policies["mta-sts."+domain] = body
}

// Policy writes an MTA-STS policy file.
func Policy(mode string, maxAge int, mx ...string) string {
	s := fmt.Sprintf("version: STSv1\nmode: %s\nmax_age: %d\n", mode, maxAge)
	for _, m := range mx {
		s += "mx: " + m + "\n"
	}
	return s
}

// TLSA is the zone line of a TLSA record at _25._tcp.host.
func TLSA(host string, r policy.TLSA) string {
	return "_25._tcp." + host + ". TLSA " + r.String()
}

func (w *World) servePolicy(rw http.ResponseWriter, r *http.Request) {
	w.mu.Lock()
	body, ok := w.policies[strings.Split(r.Host, ":")[0]]
	w.mu.Unlock()
	switch {
	case !ok || r.URL.Path != "/.well-known/mta-sts.txt":
		http.NotFound(rw, r)
	case body == "redirect":
		http.Redirect(rw, r, "https://elsewhere.test/policy.txt", http.StatusMovedPermanently)
	default:
		rw.Header().Set("Content-Type", "text/plain")
		io.WriteString(rw, body)
	}
}

func (w *World) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.certs[hello.ServerName]; c != nil {
		return c, nil
	}
	iss, err := w.CA.Issue(certgen.Options{DNSNames: []string{hello.ServerName}})
	if err != nil {
		return nil, err
	}
	c := iss.TLSCertificate()
	w.certs[hello.ServerName] = &c
	return &c, nil
}
