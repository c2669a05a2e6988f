package mtasts

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tlsrelay/policy"
	"tlsrelay/policy/certgen"
	"tlsrelay/relay/dnsx"
	"tlsrelay/relay/dnsx/dnstest"
)

func TestParseAndMatch(t *testing.T) {
	p, err := Parse([]byte("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mail.example.test\r\nmax_age: 86400\r\nextension: ignored\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != Enforce || p.MaxAge != 24*time.Hour || len(p.MX) != 2 {
		t.Errorf("parsed %+v", p)
	}
	for host, want := range map[string]bool{
		"mx1.example.test": true, "MX1.Example.Test.": true, "a.mail.example.test": true,
		"a.b.mail.example.test": false, "mail.example.test": false, "mx2.example.test": false, "xmx1.example.test": false,
	} {
		if got := p.Matches(host); got != want {
			t.Errorf("Matches(%q) = %v", host, got)
		}
	}
	again, err := Parse([]byte(p.String()))
	if err != nil || again.String() != p.String() {
		t.Errorf("round trip: %v %q", err, again)
	}
	for _, bad := range []string{
		"mode: enforce\nmx: a.test\nmax_age: 1\n",                           // no version
		"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",           // wrong version
		"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",            // bad mode
		"version: STSv1\nmode: enforce\nmax_age: 1\n",                       // no mx
		"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n", // max_age too large
		"version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",         // wildcard not leftmost
		"<html>not a policy</html>",
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	if p, err := Parse([]byte("version: STSv1\nmode: none\nmax_age: 1\n")); err != nil || p.Mode != None {
		t.Errorf("mode none without mx: %v", err)
	}
}

func TestParseRecord(t *testing.T) {
	if id, err := ParseRecord([]string{"something else", "v=STSv1; id=20240101T0000"}); err != nil || id != "20240101T0000" {
		t.Errorf("%q %v", id, err)
	}
	if _, err := ParseRecord([]string{"v=spf1 -all"}); !errors.Is(err, ErrNoRecord) {
		t.Errorf("no record: %v", err)
	}
	for _, bad := range [][]string{{"v=STSv1; id=1", "v=STSv1; id=2"}, {"v=STSv1;"}, {"v=STSv1; id=has-dash"}, {"v=STSv1x; id=1"}} {
		if _, err := ParseRecord(bad); err == nil || errors.Is(err, ErrNoRecord) {
			t.Errorf("accepted %q: %v", bad, err)
		}
	}
}

// stsServer is an HTTPS server for mta-sts.<domain> under a test CA,
// reached through the dialer of the returned Fetcher whatever the name.
type stsServer struct {
	*httptest.Server
	hits    atomic.Int64
	handler atomic.Value // http.HandlerFunc
}

func newSTS(t *testing.T, ca *certgen.CA, name string) (*stsServer, *Fetcher) {
	t.Helper()
	leaf, err := ca.Issue(certgen.Options{DNSNames: []string{name}})
	if err != nil {
		t.Fatal(err)
	}
	s := &stsServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.handler.Load().(http.HandlerFunc)(w, r)
	}))
	s.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLSCertificate()}}
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some cases
	s.StartTLS()
	t.Cleanup(s.Close)
	roots := poolOf(ca)
	f := &Fetcher{Roots: roots, Timeout: 5 * time.Second, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", s.Listener.Addr().String())
	}}
	return s, f
}

func (s *stsServer) serve(h http.HandlerFunc) { s.handler.Store(h) }

func policyHandler(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte(body))
	}
}

const goodPolicy = "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n"

func TestFetch(t *testing.T) {
	ca, _ := certgen.NewCA("STS CA")
	s, f := newSTS(t, ca, "mta-sts.sts.test")
	ctx := context.Background()
	s.serve(policyHandler(goodPolicy))
	if p, err := f.Fetch(ctx, "sts.test"); err != nil || p.Mode != Enforce {
		t.Fatalf("fetch: %v", err)
	}
	cases := []struct {
		name   string
		h      http.HandlerFunc
		result policy.ResultType
		says   string
	}{
		{"redirect", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/.well-known/mta-sts.txt" {
				http.Redirect(w, r, "https://mta-sts.sts.test/elsewhere.txt", http.StatusFound)
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte(goodPolicy)) // what a client that follows it would get
		}, policy.ResultSTSFetchError, "redirect"},
		{"404", http.NotFound, policy.ResultSTSFetchError, "HTTP 404"},
		{"html", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.Write([]byte(goodPolicy))
		}, policy.ResultSTSPolicyInvalid, "text/html"},
		{"too large", policyHandler(goodPolicy + strings.Repeat("x: y\n", MaxPolicyBytes/5+1)), policy.ResultSTSPolicyInvalid, "larger than"},
		{"invalid", policyHandler("version: STSv1\nmode: enforce\n"), policy.ResultSTSPolicyInvalid, "max_age"},
	}
	for _, c := range cases {
		s.serve(c.h)
		_, err := f.Fetch(ctx, "sts.test")
		var fe *FetchError
		if !errors.As(err, &fe) || fe.Result != c.result || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want %s saying %q", c.name, err, c.result, c.says)
		}
	}
	// A certificate for another name, and one from an untrusted CA.
	s.serve(policyHandler(goodPolicy))
	other, f2 := newSTS(t, ca, "mta-sts.other.test")
	other.serve(policyHandler(goodPolicy))
	untrusted, _ := certgen.NewCA("Untrusted")
	f2.Roots = poolOf(untrusted)
	for _, ff := range []*Fetcher{{Roots: poolOf(ca), Dial: f2.Dial}, f2} {
		_, err := ff.Fetch(ctx, "sts.test")
		var fe *FetchError
		if !errors.As(err, &fe) || fe.Result != policy.ResultSTSWebPKIInvalid {
			t.Errorf("bad certificate: %v, want sts-webpki-invalid", err)
		}
	}
}

func TestAgentCachesAndFallsBack(t *testing.T) {
	ca, _ := certgen.NewCA("STS CA")
	s, f := newSTS(t, ca, "mta-sts.sts.test")
	dns, err := dnstest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	dns.MustAdd(`_mta-sts.sts.test. TXT "v=STSv1; id=one"`)
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	cacheDir := t.TempDir()
	a := &Agent{DNS: &dnsx.Client{Server: dns.Addr()}, Fetcher: f, Cache: &Cache{Dir: cacheDir}, Now: func() time.Time { return now }}
	ctx := context.Background()
	s.serve(policyHandler(goodPolicy))

	r, err := a.Lookup(ctx, "sts.test")
	if err != nil || r.Policy == nil || r.FromCache || r.ID != "one" || r.Problem != nil {
		t.Fatalf("first lookup: %+v, %v", r, err)
	}
	// Same id, fresh: from the cache, no fetch. A new Agent reads it from disk.
	a = &Agent{DNS: a.DNS, Fetcher: f, Cache: &Cache{Dir: cacheDir}, Now: a.Now}
	hits := s.hits.Load()
	if r, _ = a.Lookup(ctx, "sts.test"); !r.FromCache || r.Policy == nil || s.hits.Load() != hits {
		t.Errorf("second lookup: %+v (fetches %d → %d)", r, hits, s.hits.Load())
	}
	// The server breaks and the id changes: the cached policy stays in
	// force, with the fetch error recorded.
	s.serve(http.NotFound)
	dns.Remove("_mta-sts.sts.test", 16)
	dns.MustAdd(`_mta-sts.sts.test. TXT "v=STSv1; id=two"`)
	r, _ = a.Lookup(ctx, "sts.test")
	if !r.FromCache || r.Policy == nil || r.Problem == nil || r.Problem.Result != policy.ResultSTSFetchError {
		t.Errorf("fetch fails with a cached policy: %+v", r)
	}
	// Past half its max_age the policy is refreshed, even with the same id.
	s.serve(policyHandler(strings.Replace(goodPolicy, "enforce", "testing", 1)))
	dns.Remove("_mta-sts.sts.test", 16)
	dns.MustAdd(`_mta-sts.sts.test. TXT "v=STSv1; id=one"`)
	now = now.Add(13 * time.Hour)
	hits = s.hits.Load()
	if r, _ = a.Lookup(ctx, "sts.test"); r.FromCache || r.Policy.Mode != Testing || s.hits.Load() != hits+1 {
		t.Errorf("refresh before expiry: %+v", r)
	}
	// The TXT record disappears: the cached policy holds until it expires.
	dns.Remove("_mta-sts.sts.test", 16)
	if r, _ = a.Lookup(ctx, "sts.test"); r.Policy == nil || !r.FromCache {
		t.Errorf("TXT gone, cache valid: %+v", r)
	}
	now = now.Add(25 * time.Hour)
	if r, _ = a.Lookup(ctx, "sts.test"); r.Policy != nil {
		t.Errorf("TXT gone, cache expired: %+v", r)
	}
	// A record but no policy to be had, and nothing cached: no policy,
	// with the problem recorded.
	dns.MustAdd(`_mta-sts.new.test. TXT "v=STSv1; id=x"`)
	s.serve(http.NotFound)
	if r, _ = a.Lookup(ctx, "new.test"); r.Policy != nil || r.Problem == nil {
		t.Errorf("no cache, fetch fails: %+v", r)
	}
}

func poolOf(ca *certgen.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}
