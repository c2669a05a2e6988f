package policy_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
)

func TestFetchMissingIssuerConfirmsIncompleteChain(t *testing.T) {
	root, _ := certgen.NewCA("AIA Root")
	inter, interCert, _ := root.Intermediate("AIA Intermediate", certgen.Options{})
	other, _ := certgen.NewCA("Unrelated")
	serve := map[string][]byte{"/inter.crt": interCert.Cert.Raw, "/wrong.crt": other.Cert.Raw}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, ok := serve[r.URL.Path]; ok {
			w.Write(b)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "root.pem")
	certgen.WriteCertFile(caFile, root.Cert)
	d := compile(t, policy.Spec{CAFile: caFile})

	for path, want := range map[string]struct{ found, completes bool }{
		"/inter.crt": {true, true}, "/wrong.crt": {false, false}, "/missing": {false, false},
	} {
		leaf, err := inter.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"},
			IssuingCertificateURL: []string{srv.URL + path}})
		if err != nil {
			t.Fatal(err)
		}
		got := d.FetchMissingIssuer(context.Background(), []*x509.Certificate{leaf.Cert}, nil, policy.AIAInternalToo)
		if got == nil || got.Found != want.found || got.Completes != want.completes {
			t.Errorf("%s: %+v, want found=%v completes=%v", path, got, want.found, want.completes)
		}
	}
	noAIA, _ := inter.Issue(certgen.Options{CommonName: "x", DNSNames: []string{"x"}})
	if got := d.FetchMissingIssuer(context.Background(), []*x509.Certificate{noAIA.Cert}, nil, policy.AIAInternalToo); got != nil {
		t.Errorf("a leaf without AIA: %+v", got)
	}
}

// aiaServer serves the issuer at /inter.crt, redirects /redirect there,
// serves 100 KiB at /big, and counts the requests for each path.
func aiaServer(t *testing.T, issuer []byte) (*httptest.Server, func(path string) int) {
	t.Helper()
	var mu sync.Mutex
	hits := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits[r.URL.Path]++
		mu.Unlock()
		switch r.URL.Path {
		case "/inter.crt":
			w.Write(issuer)
		case "/redirect":
			http.Redirect(w, r, "/inter.crt", http.StatusFound)
		case "/big":
			w.Write(make([]byte, 100<<10))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func(path string) int { mu.Lock(); defer mu.Unlock(); return hits[path] }
}

// TestFetchMissingIssuerLimits: the caIssuers URL is chosen by the server
// being checked, so its fetch follows no redirect, reads at most 64 KiB, and
// reaches a loopback address only when the checked upstream is itself
// internal. Only 127.0.0.1 is ever contacted; the refusals happen before
// any connection is made.
func TestFetchMissingIssuerLimits(t *testing.T) {
	root, _ := certgen.NewCA("AIA Root")
	inter, interCert, _ := root.Intermediate("AIA Intermediate", certgen.Options{})
	srv, hits := aiaServer(t, interCert.Cert.Raw)
	caFile := filepath.Join(t.TempDir(), "root.pem")
	certgen.WriteCertFile(caFile, root.Cert)
	d := compile(t, policy.Spec{CAFile: caFile})
	leafFor := func(url string) []*x509.Certificate {
		leaf, err := inter.Issue(certgen.Options{CommonName: "mx.example.test", DNSNames: []string{"mx.example.test"},
			IssuingCertificateURL: []string{url}})
		if err != nil {
			t.Fatal(err)
		}
		return []*x509.Certificate{leaf.Cert}
	}
	ctx := context.Background()

	got := d.FetchMissingIssuer(ctx, leafFor(srv.URL+"/redirect"), nil, policy.AIAInternalToo)
	if got.Found || !strings.Contains(got.Problem, "redirects are not followed") || !strings.Contains(got.Problem, `"/inter.crt"`) {
		t.Errorf("redirect: %+v, want it not followed", got)
	}
	if n := hits("/inter.crt"); n != 0 {
		t.Errorf("the redirect was followed (%d requests for its target)", n)
	}

	got = d.FetchMissingIssuer(ctx, leafFor(srv.URL+"/inter.crt"), nil, policy.AIAPublicOnly)
	if got.Found || !strings.Contains(got.Problem, "not fetched") || !strings.Contains(got.Problem, "127.0.0.1") {
		t.Errorf("loopback URL for a public upstream: %+v, want it refused", got)
	}
	if n := hits("/inter.crt"); n != 0 {
		t.Errorf("loopback URL for a public upstream was fetched (%d requests)", n)
	}
	// The same URL when the checked upstream is on loopback: fetched.
	if got := d.FetchMissingIssuer(ctx, leafFor(srv.URL+"/inter.crt"), nil, policy.ReachFor(ctx, "127.0.0.1:25")); !got.Completes {
		t.Errorf("loopback URL for a loopback upstream: %+v, want it fetched and completing the chain", got)
	}

	got = d.FetchMissingIssuer(ctx, leafFor(srv.URL+"/big"), nil, policy.AIAInternalToo)
	if got.Found || !strings.Contains(got.Problem, "larger than 64 KiB") {
		t.Errorf("100 KiB answer: %+v", got)
	}
	got = d.FetchMissingIssuer(ctx, leafFor("ldap://127.0.0.1/cn=x"), nil, policy.AIAInternalToo)
	if got.Found || !strings.Contains(got.Problem, "only http://") {
		t.Errorf("ldap URL: %+v", got)
	}
}

// TestInternalAddresses classifies addresses; nothing is contacted.
func TestInternalAddresses(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "127.5.5.5", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
		"169.254.169.254", "fe80::1", "fc00::1", "fd12::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1",
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "100.64.0.1", "255.255.255.255", "64:ff9b::a9fe:a9fe", "2002:a00:1::1"} {
		if !policy.IsInternalAddress(netip.MustParseAddr(s)) {
			t.Errorf("%s: not internal", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "2001:4860:4860::8888", "64:ff9b::808:808", "2002:808:808::1", "192.0.2.1"} {
		if policy.IsInternalAddress(netip.MustParseAddr(s)) {
			t.Errorf("%s: internal", s)
		}
	}
	ctx := context.Background()
	for upstream, want := range map[string]policy.AIAReach{
		"127.0.0.1:25": policy.AIAInternalToo, "[::1]:587": policy.AIAInternalToo, "10.0.0.5:25": policy.AIAInternalToo,
		"192.0.2.1:25": policy.AIAPublicOnly, "[2001:db8::1]:25": policy.AIAPublicOnly,
	} {
		if got := policy.ReachFor(ctx, upstream); got != want {
			t.Errorf("ReachFor(%s) = %v, want %v", upstream, got, want)
		}
	}
}
