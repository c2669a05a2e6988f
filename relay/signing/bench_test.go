package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func benchSigner(b *testing.B, key any) *Signer {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "k.pem")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	s, err := Load([]Spec{{Domain: "example.test", Selector: "s", PrivateKeyFile: path}})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkSign signs a 10 KiB message as the relay does on acceptance.
func BenchmarkSign(b *testing.B) {
	headers := []byte("From: app@example.test\r\nTo: x@y.test\r\nSubject: bench\r\nDate: Sun, 22 Nov 2026 08:00:00 +0000\r\n")
	msg := append(append([]byte{}, headers...), "\r\n"+strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567\r\n", 140)...)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	for name, key := range map[string]any{"rsa2048": rsaKey, "ed25519": edKey} {
		s := benchSigner(b, key)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				sig, _, err := s.Sign(headers, bytes.NewReader(msg))
				if err != nil || sig == "" {
					b.Fatal(err)
				}
			}
		})
	}
}
