package oauth

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"time"

	"tlsrelay/policy"
)

// clientAssertionType is the client_assertion_type of a JWT assertion
// (RFC 7523, 2.2).
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// clientAssertion signs a fresh client assertion for clientID at tokenURL:
// a JWT (RS256) naming the certificate by its thumbprints (x5t#S256, and
// x5t for endpoints that only know SHA-1 thumbprints), issued by and about
// the client, for the token endpoint, valid five minutes, used once (jti).
func clientAssertion(cc *policy.ClientCertificate, clientID, tokenURL string, now time.Time) (string, error) {
	s256 := sha256.Sum256(cc.Cert.Raw)
	s1 := sha1.Sum(cc.Cert.Raw) // an identifier of the certificate, not a signature
	header := map[string]string{"alg": "RS256", "typ": "JWT",
		"x5t#S256": base64.RawURLEncoding.EncodeToString(s256[:]), "x5t": base64.RawURLEncoding.EncodeToString(s1[:])}
	jti := make([]byte, 16)
	rand.Read(jti)
	claims := map[string]any{"aud": tokenURL, "iss": clientID, "sub": clientID, "jti": hex.EncodeToString(jti),
		"nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, cc.Key(), crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
