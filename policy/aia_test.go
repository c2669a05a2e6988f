package policy_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"path/filepath"
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
		got := d.FetchMissingIssuer(context.Background(), []*x509.Certificate{leaf.Cert}, nil)
		if got == nil || got.Found != want.found || got.Completes != want.completes {
			t.Errorf("%s: %+v, want found=%v completes=%v", path, got, want.found, want.completes)
		}
	}
	noAIA, _ := inter.Issue(certgen.Options{CommonName: "x", DNSNames: []string{"x"}})
	if got := d.FetchMissingIssuer(context.Background(), []*x509.Certificate{noAIA.Cert}, nil); got != nil {
		t.Errorf("a leaf without AIA: %+v", got)
	}
}
