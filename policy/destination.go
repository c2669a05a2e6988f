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
	Domains []string `toml:"domains"`
	// Upstreams is the `upstream` key: one next hop "host:port", or an
	// array of them tried in order (see Hops).
	Upstreams Upstreams `toml:"upstream"`
	// Upstream is one next hop, for a Spec written in code; Upstreams,
	// when set, takes its place.
	Upstream         string   `toml:"-"`
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
	// MXSecurity is the level MX delivery requires (upstream = "mx").
	MXSecurity string `toml:"mx_security"`

	// Senders selects the destination by envelope sender too (see
	// SenderPattern); empty: any sender.
	Senders []string `toml:"senders"`
	// Limits of the mail sent to this destination's upstreams (0: none).
	MaxConnections          int `toml:"max_connections"`
	MaxMessagesPerMinute    int `toml:"max_messages_per_minute"`
	MaxRecipientsPerMessage int `toml:"max_recipients_per_message"`
	// Sender rewriting, opt-in: EnvelopeFrom replaces MAIL FROM;
	// HeaderFrom = "rewrite" replaces the From header's address with
	// EnvelopeFrom.
	EnvelopeFrom string `toml:"envelope_from"`
	HeaderFrom   string `toml:"header_from"`
}

// Destination is a compiled, validated policy for a set of recipient
// domains (and, with Senders, envelope senders): where their mail goes and
// what the TLS to it must prove.
//
// A destination has one or more next hops (Hops), tried in order. Each hop
// is itself a *Destination: the destination's policy with that hop's
// Upstream, Host and, unless the configuration sets them, its own
// RequireHostname and ServerName, so that everything that connects to and
// verifies an upstream takes a hop as it takes a destination. The first
// hop is the destination itself; Parent leads from a hop to it.
type Destination struct {
	Domains  []string
	Upstream string // host:port (of this hop; of the first for a destination)
	Host     string // the upstream's host part
	// Addr, when set, is the address connected to instead of Upstream (an
	// MX host's IP address, see ForMX).
	Addr            string
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
	// Senders, when set, restrict the destination to these senders.
	Senders []SenderPattern
	Limits  Limits
	Rewrite Rewrite
	spec    Spec
	// MXSecurity is set when upstream = "mx": what the recipient
	// domain's mail exchangers must prove.
	MXSecurity MXSecurity
	// mx is set on the policy of one connection to a mail exchanger.
	mx     *MXHost
	hops   []*Destination // the first is the destination itself
	parent *Destination   // nil for the destination itself
	// sessions lets reconnections resume TLS sessions (verification still
	// runs on every resumed connection, see ClientConfig).
	sessions tls.ClientSessionCache
}

// LogsIn reports whether the destination authenticates to its upstream,
// with a password or with OAuth.
func (d *Destination) LogsIn() bool { return d.AuthUsername != "" || d.OAuth != nil }

// Spec returns the configuration the destination was compiled from.
func (d *Destination) Spec() Spec { return d.spec }

// Name is how logs, replies, metrics and the queue refer to the
// destination: its first domain, and for one chosen by sender also its
// first sender pattern ("example.com from *@alerts.example.com"), so that
// destinations sharing a recipient domain keep apart.
func (d *Destination) Name() string {
	if len(d.Senders) > 0 {
		return d.Domains[0] + " from " + d.Senders[0].String()
	}
	return d.Domains[0]
}

// Hops returns the destination's next hops in the order they are tried;
// the first is d itself. For a hop it returns the hops of its destination.
func (d *Destination) Hops() []*Destination {
	if d.parent != nil {
		return d.parent.hops
	}
	return d.hops
}

// Parent returns the destination a hop belongs to (d itself for a
// destination, which is its own first hop).
func (d *Destination) Parent() *Destination {
	if d.parent != nil {
		return d.parent
	}
	return d
}

// HopName names one hop of a destination: "name host:port". It keys what
// is kept per hop (suspension, throttling).
func (d *Destination) HopName() string { return d.Name() + " " + d.Upstream }

// Limits bound the mail a destination's upstreams are sent; 0 is no limit.
type Limits struct {
	MaxConnections          int // connections open at once, over all hops
	MaxMessagesPerMinute    int // upstream transactions per minute, smoothly
	MaxRecipientsPerMessage int // recipients per upstream transaction
}

// Rewrite is the opt-in sender rewriting of a destination.
type Rewrite struct {
	// EnvelopeFrom, when set, replaces MAIL FROM (canonical local@domain).
	EnvelopeFrom string
	// HeaderFrom replaces the From header's address with EnvelopeFrom,
	// keeping the display name, and adds Reply-To with the original
	// address when the message has none.
	HeaderFrom bool
}

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
			if s.Upstream == "" && len(s.Upstreams) == 0 {
				s.Upstream = prov.Upstream
			}
			if s.TLS == "" {
				s.TLS = string(prov.TLS)
			}
		}
	}
	upstreams := s.Upstreams
	if len(upstreams) == 0 && s.Upstream != "" {
		upstreams = Upstreams{s.Upstream}
	}
	if len(upstreams) == 1 && strings.EqualFold(upstreams[0], "mx") {
		d.compileMX(s, fail)
		upstreams = Upstreams{"mx:" + MXPort} // for the checks below; ForMX sets each host
	} else if s.MXSecurity != "" {
		fail(fieldErr("mx_security", "applies only to upstream = \"mx\"; remove it, or set upstream = \"mx\" to deliver straight to the recipient domains' mail exchangers"))
	}
	var hosts, addrs []string
	if len(upstreams) == 0 {
		fail(fieldErr("upstream", `required: the next hop as host:port, e.g. upstream = "smtp.example.com:587", or several tried in order, e.g. upstream = ["smtp1.example.com:587", "smtp2.example.com:587"]`))
	}
	seen := map[string]bool{}
	for _, u := range upstreams {
		host, port, err := net.SplitHostPort(u)
		switch {
		case err != nil || host == "" || port == "":
			fail(fieldErr("upstream", "%q is not host:port; write e.g. \"smtp.example.com:587\"", u))
		case seen[strings.ToLower(u)]:
			fail(fieldErr("upstream", "%q is listed twice; name each next hop once", u))
		default:
			seen[strings.ToLower(u)] = true
			hosts, addrs = append(hosts, host), append(addrs, u)
		}
	}
	host := ""
	if len(addrs) > 0 {
		d.Upstream, host = addrs[0], hosts[0]
	}
	d.Host = host
	if d.IsMX() {
		d.Upstream, d.Host = "mx", ""
	}

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
	for _, err := range d.compileRouting(s) {
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
	if d.IsMX() {
		d.RequireHostname, d.ServerName = nil, "" // each host's, from DNS (ForMX)
	}
	switch len(errs) {
	case 0:
		d.hops = []*Destination{d}
		for i := 1; i < len(addrs); i++ {
			d.hops = append(d.hops, d.hop(addrs[i], hosts[i]))
		}
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
