package policy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// Mode is how TLS is started with the upstream. There is deliberately no
// plaintext mode.
type Mode string

// The two ways to reach an upstream.
const (
	StartTLS Mode = "starttls" // plain connect, then the STARTTLS command
	Implicit Mode = "implicit" // TLS from the first byte (port 465 style)
)

// OnFailure is what the relay does with a message it cannot deliver now.
type OnFailure string

// The two failure policies.
const (
	Queue  OnFailure = "queue"  // accept, spool durably, retry
	Reject OnFailure = "reject" // deliver before answering DATA; refuse on failure
)

// Spec is one [[destination]] table as written in the TOML configuration.
// Compile turns it into a Destination, checking every field.
type Spec struct {
	Domains          []string `toml:"domains"`
	Upstream         string   `toml:"upstream"`
	TLS              string   `toml:"tls"`
	MinTLS           string   `toml:"min_tls"`
	CAFile           string   `toml:"ca_file"`
	PinSHA256        []string `toml:"pin_sha256"`
	RequireHostname  []string `toml:"require_hostname"`
	ServerName       string   `toml:"server_name"`
	OnFailure        string   `toml:"on_failure"`
	AuthUsername     string   `toml:"auth_username"`
	AuthPasswordEnv  string   `toml:"auth_password_env"`
	AuthPasswordFile string   `toml:"auth_password_file"`
	ClientCertFile   string   `toml:"client_cert_file"`
	ClientKeyFile    string   `toml:"client_key_file"`
	// Provider names a preset (microsoft365, gmail) that fills upstream,
	// tls and the OAuth endpoints and scopes; every value is overridable.
	Provider string `toml:"provider"`
	// AuthMechanism is auto, xoauth2, oauthbearer, plain or login.
	AuthMechanism string `toml:"auth_mechanism"`
	// OAuth is the [destination.oauth] table.
	OAuth *OAuthSpec `toml:"oauth"`
}

// Destination is a compiled, validated policy for a set of recipient
// domains: where their mail goes and what the TLS to it must prove.
type Destination struct {
	Domains         []string
	Upstream        string // host:port
	Host            string // the upstream's host part
	Mode            Mode
	MinTLS          uint16
	CAFile          string              // "" when Roots are the system's
	Roots           *x509.CertPool      // nil means the system roots
	rootCerts       []*x509.Certificate // the certificates of CAFile, for diagnosis
	Pins            []string            // base64 SHA-256 of SubjectPublicKeyInfo
	RequireHostname []string
	ServerName      string
	OnFailure       OnFailure
	AuthUsername    string
	AuthPassword    Secret
	ClientCert      *tls.Certificate
	// Provider is the preset used, if any; OAuth the token configuration
	// when the destination logs in with OAuth; AuthMechanism the SASL
	// mechanism asked for.
	Provider      *Provider
	OAuth         *OAuth
	AuthMechanism Mechanism
	spec          Spec
	// sessions lets reconnections resume TLS sessions (verification still
	// runs on every resumed connection, see ClientConfig).
	sessions tls.ClientSessionCache
}

// LogsIn reports whether the destination authenticates to its upstream,
// with a password or with OAuth.
func (d *Destination) LogsIn() bool { return d.AuthUsername != "" || d.OAuth != nil }

// Spec returns the configuration the destination was compiled from.
func (d *Destination) Spec() Spec { return d.spec }

// Name is how logs and replies refer to the destination: its first domain.
func (d *Destination) Name() string { return d.Domains[0] }

// FieldError is a configuration error in one key of one destination.
type FieldError struct {
	Key     string // the TOML key, e.g. "min_tls"
	Message string // what is wrong and what to write instead
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Message }

func fieldErr(key, format string, args ...any) *FieldError {
	return &FieldError{Key: key, Message: fmt.Sprintf(format, args...)}
}

// Compile checks s and builds the Destination it describes. Files it names
// (ca_file, client certificates, password files) are read now, so a
// destination that compiles can be used without further surprises. Every
// key is checked: the error is a *FieldError, or several joined
// (errors.Join) when several keys are wrong.
func Compile(s Spec) (*Destination, error) {
	d := &Destination{spec: s, sessions: tls.NewLRUClientSessionCache(64)}
	var errs []error
	fail := func(err error) { errs = append(errs, err) }
	if len(s.Domains) == 0 {
		fail(fieldErr("domains", `at least one recipient domain is required, e.g. domains = ["example.com", ".example.com"]`))
	}
	for _, dom := range s.Domains {
		p, err := normalizePattern(dom)
		if err != nil {
			fail(fieldErr("domains", "%v", err))
			continue
		}
		d.Domains = append(d.Domains, p)
	}

	if s.Provider != "" {
		if prov, ok := Providers[strings.ToLower(s.Provider)]; !ok {
			fail(fieldErr("provider", "%q is not a known provider; write \"microsoft365\" or \"gmail\", or leave it out and set upstream yourself", s.Provider))
		} else {
			d.Provider = prov
			if s.Upstream == "" {
				s.Upstream = prov.Upstream
			}
			if s.TLS == "" {
				s.TLS = string(prov.TLS)
			}
		}
	}
	host, port, err := net.SplitHostPort(s.Upstream)
	switch {
	case s.Upstream == "":
		fail(fieldErr("upstream", `required: the next hop as host:port, e.g. upstream = "smtp.example.com:587"`))
	case err != nil || host == "" || port == "":
		fail(fieldErr("upstream", "%q is not host:port; write e.g. \"smtp.example.com:587\"", s.Upstream))
	}
	d.Upstream, d.Host = s.Upstream, host

	switch strings.ToLower(s.TLS) {
	case "", "starttls":
		d.Mode = StartTLS
	case "implicit":
		d.Mode = Implicit
	case "none", "plain", "off", "false", "skip-verify", "skip_verify", "insecure":
		fail(fieldErr("tls", "%q is not offered: tlsrelay never sends mail without verified TLS; use \"starttls\" or \"implicit\", and ca_file or pin_sha256 for a private server", s.TLS))
	default:
		fail(fieldErr("tls", "%q is not a TLS mode; write \"starttls\" or \"implicit\"", s.TLS))
	}

	switch s.MinTLS {
	case "", "1.2":
		d.MinTLS = tls.VersionTLS12
	case "1.3":
		d.MinTLS = tls.VersionTLS13
	case "1.0", "1.1":
		fail(fieldErr("min_tls", "%q is refused: TLS 1.0 and 1.1 are broken and deprecated (RFC 8996); write \"1.2\" or \"1.3\", and upgrade a server that cannot do 1.2", s.MinTLS))
	default:
		fail(fieldErr("min_tls", "%q is not a TLS version; write \"1.2\" or \"1.3\"", s.MinTLS))
	}

	if s.CAFile != "" {
		certs, err := loadCAFile(s.CAFile)
		if err != nil {
			fail(fieldErr("ca_file", "%v", err))
		} else {
			d.CAFile, d.Roots, d.rootCerts = s.CAFile, x509.NewCertPool(), certs
			for _, c := range certs {
				d.Roots.AddCert(c)
			}
		}
	}

	for _, p := range s.PinSHA256 {
		raw, err := base64.StdEncoding.DecodeString(p)
		if err != nil || len(raw) != sha256.Size {
			fail(fieldErr("pin_sha256", "%q is not a base64 SHA-256 (44 characters ending in '='); get the pin from `tlsrelay check`", p))
			continue
		}
		d.Pins = append(d.Pins, p)
	}

	d.RequireHostname = []string{host}
	if len(s.RequireHostname) > 0 {
		d.RequireHostname = nil
		for _, h := range s.RequireHostname {
			p, err := normalizePattern(h)
			if err != nil || p == "*" {
				fail(fieldErr("require_hostname", "%q is not a host name or .suffix", h))
				continue
			}
			d.RequireHostname = append(d.RequireHostname, p)
		}
	}
	d.ServerName = s.ServerName
	if d.ServerName == "" {
		d.ServerName = host
	}

	switch s.OnFailure {
	case "", "queue":
		d.OnFailure = Queue
	case "reject":
		d.OnFailure = Reject
	default:
		fail(fieldErr("on_failure", "%q is not a failure policy; write \"queue\" or \"reject\"", s.OnFailure))
	}

	// auth_mechanism is judged against the credentials it needs: not when
	// those did not compile (one mistake, reported once).
	authErr := d.compileAuth(s)
	if authErr != nil {
		fail(authErr)
	}
	if err := d.compileOAuth(s, d.Provider); err != nil {
		fail(err)
	} else if err := d.compileMechanism(s); err != nil && authErr == nil {
		fail(err)
	}

	if (s.ClientCertFile == "") != (s.ClientKeyFile == "") {
		fail(fieldErr("client_cert_file", "client_cert_file and client_key_file go together; set both or neither"))
	} else if s.ClientCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.ClientCertFile, s.ClientKeyFile)
		if err != nil {
			fail(fieldErr("client_cert_file", "cannot load the client certificate and key: %v", err))
		} else {
			d.ClientCert = &cert
		}
	}
	switch len(errs) {
	case 0:
		return d, nil
	case 1:
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

func (d *Destination) compileAuth(s Spec) error {
	if s.AuthPasswordEnv != "" && s.AuthPasswordFile != "" {
		return fieldErr("auth_password_env", "set auth_password_env or auth_password_file, not both")
	}
	hasPassword := s.AuthPasswordEnv != "" || s.AuthPasswordFile != ""
	if s.AuthUsername == "" {
		if hasPassword {
			return fieldErr("auth_username", "a password source is set but auth_username is empty")
		}
		return nil
	}
	d.AuthUsername = s.AuthUsername
	switch {
	case s.AuthPasswordEnv != "":
		v, ok := os.LookupEnv(s.AuthPasswordEnv)
		if !ok || v == "" {
			return fieldErr("auth_password_env", "the environment variable %s is not set or empty", s.AuthPasswordEnv)
		}
		d.AuthPassword = Secret(v)
	case s.AuthPasswordFile != "":
		fi, err := os.Stat(s.AuthPasswordFile)
		if err != nil {
			return fieldErr("auth_password_file", "%v", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return fieldErr("auth_password_file", "%s has mode %v: a password file must be readable by its owner only; run chmod 600 %s (in Kubernetes, mount the Secret with defaultMode: 0400)",
				s.AuthPasswordFile, perm, s.AuthPasswordFile)
		}
		raw, err := os.ReadFile(s.AuthPasswordFile)
		if err != nil {
			return fieldErr("auth_password_file", "%v", err)
		}
		d.AuthPassword = Secret(strings.TrimRight(string(raw), "\r\n"))
		if d.AuthPassword == "" {
			return fieldErr("auth_password_file", "%s is empty", s.AuthPasswordFile)
		}
	default:
		return fieldErr("auth_username", "auth_username is set but no password: set auth_password_env (the name of an environment variable) or auth_password_file")
	}
	return nil
}

func loadCAFile(path string) ([]*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, raw = pem.Decode(raw)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: certificate #%d does not parse: %v", path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate; it must contain one or more -----BEGIN CERTIFICATE----- blocks", path)
	}
	return certs, nil
}

// SPKIPin returns the pin_sha256 form of a certificate's public key: the
// base64 SHA-256 of its SubjectPublicKeyInfo, as HPKP and curl use.
func SPKIPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}
