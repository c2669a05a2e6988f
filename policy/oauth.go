package policy

import (
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Flow is how a destination obtains its OAuth 2.0 access tokens.
type Flow string

// The token flows.
const (
	// ClientCredentials is app-only access with a client secret
	// (Microsoft 365: the SMTP.SendAsApp application permission).
	ClientCredentials Flow = "client_credentials"
	// JWTBearer is a Google service account with domain-wide delegation
	// (RFC 7523), impersonating the mailbox.
	JWTBearer Flow = "jwt_bearer"
	// RefreshToken is delegated access for one mailbox, from a refresh
	// token obtained once with `tlsrelay oauth login`.
	RefreshToken Flow = "refresh_token"
)

// Mechanism is the SASL mechanism used to log in to the upstream.
type Mechanism string

// The AUTH mechanisms; MechAuto picks from what EHLO offers.
const (
	MechAuto        Mechanism = "auto"
	MechXOAuth2     Mechanism = "xoauth2"
	MechOAuthBearer Mechanism = "oauthbearer"
	MechPlain       Mechanism = "plain"
	MechLogin       Mechanism = "login"
)

// OAuthSpec is the [destination.oauth] table as written in the file.
type OAuthSpec struct {
	Flow               string   `toml:"flow"`
	Mailbox            string   `toml:"mailbox"`
	Tenant             string   `toml:"tenant"`
	ClientID           string   `toml:"client_id"`
	ClientSecretEnv    string   `toml:"client_secret_env"`
	ClientSecretFile   string   `toml:"client_secret_file"`
	ClientCertFile     string   `toml:"client_cert_file"`
	ClientKeyFile      string   `toml:"client_key_file"`
	TokenURL           string   `toml:"token_url"`
	DeviceAuthURL      string   `toml:"device_auth_url"`
	AuthURL            string   `toml:"auth_url"`
	Scopes             []string `toml:"scopes"`
	ServiceAccountFile string   `toml:"service_account_file"`
	RefreshTokenFile   string   `toml:"refresh_token_file"`
	CAFile             string   `toml:"ca_file"`
}

// OAuth is a destination's compiled OAuth 2.0 configuration: everything a
// token source needs, checked at load.
type OAuth struct {
	Provider     string // "" when no preset is used
	Flow         Flow
	Mailbox      string // the identity logged in as (XOAUTH2 user=, JWT sub)
	Tenant       string
	ClientID     string
	ClientSecret Secret // "" for a public client
	// ClientCert, when set, proves the client's identity with a signed
	// assertion instead of a secret (client_credentials).
	ClientCert    *ClientCertificate
	TokenURL      string
	DeviceAuthURL string
	AuthURL       string
	Scopes        []string
	// ServiceAccount is the parsed key file of the jwt_bearer flow.
	ServiceAccount *ServiceAccount
	// RefreshTokenFile holds the current refresh token (refresh_token).
	RefreshTokenFile string
	// CAFile and Roots verify the token endpoint; nil Roots: the system's.
	// CACerts are the certificates of CAFile as loaded, so that a file
	// whose contents changed under the same name counts as a change.
	CAFile  string
	Roots   *x509.CertPool
	CACerts []*x509.Certificate
}

// ServiceAccount is a Google service account key file.
type ServiceAccount struct {
	File         string
	ClientEmail  string
	ClientID     string
	PrivateKeyID string
	PrivateKey   Secret // PEM
	TokenURI     string
}

// compileOAuth checks the oauth table and the provider preset. Each check
// is its own error, naming its key.
func (d *Destination) compileOAuth(s Spec, prov *Provider) error {
	o := s.OAuth
	if o == nil {
		return nil
	}
	if s.AuthUsername != "" || s.AuthPasswordEnv != "" || s.AuthPasswordFile != "" {
		return fieldErr("oauth", "a destination logs in with a password (auth_username) or with OAuth ([destination.oauth]), not both")
	}
	c := &OAuth{Mailbox: o.Mailbox, Tenant: o.Tenant, ClientID: o.ClientID}
	if prov != nil {
		c.Provider = prov.Name
	}
	switch Flow(o.Flow) {
	case ClientCredentials, JWTBearer, RefreshToken:
		c.Flow = Flow(o.Flow)
	case "":
		if prov == nil {
			return fieldErr("oauth.flow", `required: "client_credentials", "jwt_bearer" or "refresh_token"`)
		}
		c.Flow = prov.Flows[0]
	default:
		return fieldErr("oauth.flow", `%q is not a flow; write "client_credentials", "jwt_bearer" or "refresh_token"`, o.Flow)
	}
	if prov != nil && !prov.supports(c.Flow) {
		return fieldErr("oauth.flow", "provider %q does not offer the %s flow for SMTP; use one of %v", prov.Name, c.Flow, prov.Flows)
	}
	if c.Mailbox == "" || !strings.Contains(c.Mailbox, "@") || strings.ContainsAny(c.Mailbox, " \x01\r\n") {
		return fieldErr("oauth.mailbox", "required: the mailbox to log in as, e.g. mailbox = \"app@contoso.com\"")
	}
	if prov != nil && prov.NeedsTenant && c.Tenant == "" && o.TokenURL == "" {
		return fieldErr("oauth.tenant", "required for %s: the directory (tenant) ID or a verified domain, e.g. tenant = \"contoso.onmicrosoft.com\"", prov.Name)
	}
	if err := c.compileSecret(o); err != nil {
		return err
	}
	if c.Flow == JWTBearer {
		if o.ServiceAccountFile == "" {
			return fieldErr("oauth.service_account_file", "required for the jwt_bearer flow: the service account's JSON key file")
		}
		sa, err := loadServiceAccount(o.ServiceAccountFile)
		if err != nil {
			return fieldErr("oauth.service_account_file", "%v", err)
		}
		c.ServiceAccount = sa
	} else if o.ServiceAccountFile != "" {
		return fieldErr("oauth.service_account_file", "only the jwt_bearer flow uses a service account")
	}
	if c.Flow != JWTBearer && c.ClientID == "" {
		return fieldErr("oauth.client_id", "required: the application (client) ID of the app registration")
	}
	if err := c.compileClientCert(o); err != nil {
		return err
	}
	if c.Flow == ClientCredentials && c.ClientSecret == "" && c.ClientCert == nil {
		return fieldErr("oauth.client_secret_env", "the client_credentials flow needs a client secret (client_secret_env or client_secret_file) or a certificate (client_cert_file and client_key_file)")
	}
	if c.Flow == RefreshToken {
		if o.RefreshTokenFile == "" {
			return fieldErr("oauth.refresh_token_file", "required for the refresh_token flow: where `tlsrelay oauth login` stores the refresh token, e.g. \"/var/lib/tlsrelay/m365.token\"")
		}
		if err := checkRefreshTokenFile(o.RefreshTokenFile); err != nil {
			return err
		}
		c.RefreshTokenFile = o.RefreshTokenFile
	} else if o.RefreshTokenFile != "" {
		return fieldErr("oauth.refresh_token_file", "only the refresh_token flow uses a refresh token file")
	}

	// Endpoints and scopes: the destination's own, else the preset's.
	c.TokenURL, c.DeviceAuthURL, c.AuthURL, c.Scopes = o.TokenURL, o.DeviceAuthURL, o.AuthURL, o.Scopes
	if c.TokenURL == "" && c.ServiceAccount != nil {
		c.TokenURL = c.ServiceAccount.TokenURI
	}
	if prov != nil {
		if c.TokenURL == "" {
			c.TokenURL = prov.endpoint(prov.TokenURL, c.Tenant)
		}
		if c.DeviceAuthURL == "" && prov.DeviceAuthURL != "" {
			c.DeviceAuthURL = prov.endpoint(prov.DeviceAuthURL, c.Tenant)
		}
		if c.AuthURL == "" {
			c.AuthURL = prov.endpoint(prov.AuthURL, c.Tenant)
		}
		if len(c.Scopes) == 0 {
			c.Scopes = prov.Scopes[c.Flow]
		}
	}
	for _, u := range []struct{ key, val string }{{"oauth.token_url", c.TokenURL}, {"oauth.device_auth_url", c.DeviceAuthURL}, {"oauth.auth_url", c.AuthURL}} {
		if u.val == "" {
			continue
		}
		if err := checkHTTPS(u.val); err != nil {
			return fieldErr(u.key, "%q %v", u.val, err)
		}
	}
	if c.TokenURL == "" {
		return fieldErr("oauth.token_url", "required without a provider preset: the token endpoint, e.g. \"https://login.example.com/oauth2/token\"")
	}
	if len(c.Scopes) == 0 {
		return fieldErr("oauth.scopes", "required without a provider preset: the scopes the token must carry")
	}
	if o.CAFile != "" {
		certs, err := loadCAFile(o.CAFile)
		if err != nil {
			return fieldErr("oauth.ca_file", "%v", err)
		}
		c.CAFile, c.Roots, c.CACerts = o.CAFile, x509.NewCertPool(), certs
		for _, cert := range certs {
			c.Roots.AddCert(cert)
		}
	}
	d.OAuth = c
	return nil
}

func (c *OAuth) compileSecret(o *OAuthSpec) error {
	switch {
	case o.ClientSecretEnv != "" && o.ClientSecretFile != "":
		return fieldErr("oauth.client_secret_env", "set client_secret_env or client_secret_file, not both")
	case o.ClientSecretEnv != "":
		v, ok := os.LookupEnv(o.ClientSecretEnv)
		if !ok || v == "" {
			return fieldErr("oauth.client_secret_env", "the environment variable %s is not set or empty", o.ClientSecretEnv)
		}
		c.ClientSecret = Secret(v)
	case o.ClientSecretFile != "":
		v, err := readSecretFile(o.ClientSecretFile)
		if err != nil {
			return fieldErr("oauth.client_secret_file", "%v", err)
		}
		c.ClientSecret = Secret(strings.TrimSpace(string(v)))
		if c.ClientSecret == "" {
			return fieldErr("oauth.client_secret_file", "%s is empty", o.ClientSecretFile)
		}
	}
	return nil
}

// ClientCertificate is the certificate credential of an app registration:
// the certificate uploaded to it and the matching RSA private key, which
// signs the client assertion (RFC 7523, 2.2). Printing it shows only the
// certificate's subject.
type ClientCertificate struct {
	Cert *x509.Certificate
	key  *rsa.PrivateKey
}

// Key returns the private key, for signing the assertion.
func (c *ClientCertificate) Key() *rsa.PrivateKey { return c.key }

func (c *ClientCertificate) String() string   { return "certificate " + c.Cert.Subject.String() }
func (c *ClientCertificate) GoString() string { return c.String() }

func (c *OAuth) compileClientCert(o *OAuthSpec) error {
	if o.ClientCertFile == "" && o.ClientKeyFile == "" {
		return nil
	}
	switch {
	case o.ClientCertFile == "" || o.ClientKeyFile == "":
		return fieldErr("oauth.client_cert_file", "client_cert_file and client_key_file go together; set both or neither")
	case c.Flow != ClientCredentials:
		return fieldErr("oauth.client_cert_file", "a certificate credential is for the client_credentials flow")
	case c.ClientSecret != "":
		return fieldErr("oauth.client_cert_file", "set a client secret or a certificate, not both")
	}
	keyPEM, err := readSecretFile(o.ClientKeyFile)
	if err != nil {
		return fieldErr("oauth.client_key_file", "%v", err)
	}
	certPEM, err := os.ReadFile(o.ClientCertFile)
	if err != nil {
		return fieldErr("oauth.client_cert_file", "%v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fieldErr("oauth.client_cert_file", "cannot load the certificate and key: %v", err)
	}
	key, ok := pair.PrivateKey.(*rsa.PrivateKey)
	if !ok || key.N.BitLen() < 2048 {
		return fieldErr("oauth.client_key_file", "the key must be RSA of at least 2048 bits (Entra ID signs and checks client assertions with RS256)")
	}
	c.ClientCert = &ClientCertificate{Cert: pair.Leaf, key: key}
	if c.ClientCert.Cert == nil {
		if c.ClientCert.Cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fieldErr("oauth.client_cert_file", "%v", err)
		}
	}
	return nil
}

// readSecretFile reads a file that holds a secret, refusing one that
// others than its owner may read.
func readSecretFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, &secretModeError{path: path, perm: perm.String()}
	}
	return os.ReadFile(path)
}

type secretModeError struct{ path, perm string }

func (e *secretModeError) Error() string {
	return e.path + " has mode " + e.perm + ": a file holding a secret must be readable by its owner only; run chmod 600 " + e.path + " (in Kubernetes, mount the Secret with defaultMode: 0400)"
}

// checkRefreshTokenFile accepts a missing file (`tlsrelay oauth login`
// creates it) in an existing directory, and an existing one only when
// nobody but its owner may read it.
func checkRefreshTokenFile(path string) error {
	fi, err := os.Stat(path)
	if os.IsNotExist(err) {
		if di, derr := os.Stat(filepath.Dir(path)); derr != nil || !di.IsDir() {
			return fieldErr("oauth.refresh_token_file", "the directory of %s does not exist; create it (mode 0700) before `tlsrelay oauth login`", path)
		}
		return nil
	}
	if err != nil {
		return fieldErr("oauth.refresh_token_file", "%v", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fieldErr("oauth.refresh_token_file", "%v", &secretModeError{path: path, perm: perm.String()})
	}
	return nil
}

func checkHTTPS(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errString("is not a URL")
	}
	if u.Scheme != "https" {
		return errString("is not https: tokens are only ever requested over verified TLS")
	}
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }

// loadServiceAccount reads and checks a Google service account key file.
func loadServiceAccount(path string) (*ServiceAccount, error) {
	raw, err := readSecretFile(path)
	if err != nil {
		return nil, err
	}
	var f struct {
		Type         string `json:"type"`
		ClientEmail  string `json:"client_email"`
		ClientID     string `json:"client_id"`
		PrivateKeyID string `json:"private_key_id"`
		PrivateKey   string `json:"private_key"`
		TokenURI     string `json:"token_uri"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, errString(path + " is not a service account JSON key file: " + err.Error())
	}
	if f.Type != "service_account" || f.ClientEmail == "" || f.PrivateKey == "" {
		return nil, errString(path + " is not a service account key (it needs type \"service_account\", client_email and private_key); create a JSON key for the service account in the Google Cloud console")
	}
	block, _ := pem.Decode([]byte(f.PrivateKey))
	if block == nil {
		return nil, errString(path + ": private_key is not PEM")
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		if _, err2 := x509.ParsePKCS1PrivateKey(block.Bytes); err2 != nil {
			return nil, errString(path + ": private_key does not parse: " + err.Error())
		}
	}
	if f.TokenURI != "" {
		if err := checkHTTPS(f.TokenURI); err != nil {
			return nil, errString(path + ": token_uri " + err.Error())
		}
	}
	return &ServiceAccount{File: path, ClientEmail: f.ClientEmail, ClientID: f.ClientID, PrivateKeyID: f.PrivateKeyID,
		PrivateKey: Secret(f.PrivateKey), TokenURI: f.TokenURI}, nil
}

// compileMechanism checks auth_mechanism against the credentials.
func (d *Destination) compileMechanism(s Spec) error {
	m := Mechanism(strings.ToLower(s.AuthMechanism))
	switch m {
	case "", MechAuto:
		d.AuthMechanism = MechAuto
	case MechXOAuth2, MechOAuthBearer:
		if d.OAuth == nil {
			return fieldErr("auth_mechanism", "%s needs OAuth tokens: add a [destination.oauth] table", m)
		}
		d.AuthMechanism = m
	case MechPlain, MechLogin:
		if d.AuthUsername == "" {
			return fieldErr("auth_mechanism", "%s needs a password: set auth_username and auth_password_env or auth_password_file", m)
		}
		d.AuthMechanism = m
	default:
		return fieldErr("auth_mechanism", `%q is not a mechanism; write "auto", "xoauth2", "oauthbearer", "plain" or "login"`, s.AuthMechanism)
	}
	return nil
}
