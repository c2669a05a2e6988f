// Package config loads and checks tlsrelay's TOML configuration file.
// Loading is strict: an unknown key, a wrong type or a bad value is an
// error that names the key, the line and what to write instead, and the
// relay does not start.
package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"tlsrelay/policy"
	"tlsrelay/relay/signing"
	"tlsrelay/relay/users"
)

// Config is the whole configuration file, with defaults filled in.
type Config struct {
	Server      Server         `toml:"server"`
	Queue       Queue          `toml:"queue"`
	Log         Log            `toml:"log"`
	Metrics     Metrics        `toml:"metrics"`
	DNS         DNS            `toml:"dns"`
	Destination []policy.Spec  `toml:"destination"`
	DKIM        []signing.Spec `toml:"dkim"`
	Sendmail    Sendmail       `toml:"sendmail"`
	TLSRPT      TLSRPT         `toml:"tlsrpt"`

	// Path is the file the configuration was read from.
	Path string `toml:"-"`
	// Table is the compiled destination policies.
	Table *policy.Table `toml:"-"`
	// Networks is AllowedNetworks parsed.
	Networks []netip.Prefix `toml:"-"`
	// TLSCert is the inbound certificate, when TLS is configured.
	TLSCert *tls.Certificate `toml:"-"`
	// Users are the accounts of auth_users_file, when configured.
	Users *users.DB `toml:"-"`
	// Signer holds the DKIM keys of the [[dkim]] entries.
	Signer *signing.Signer `toml:"-"`

	explicitNetworks bool
}

// Server is the [server] table: the inbound SMTP side.
type Server struct {
	Listen          string   `toml:"listen"`
	Hostname        string   `toml:"hostname"`
	AllowedNetworks []string `toml:"allowed_networks"`
	MaxMessageBytes int64    `toml:"max_message_bytes"`
	MaxRecipients   int      `toml:"max_recipients"`
	ReadTimeout     Duration `toml:"read_timeout"`
	WriteTimeout    Duration `toml:"write_timeout"`
	ShutdownTimeout Duration `toml:"shutdown_timeout"`

	// Inbound TLS: STARTTLS on listen, and optionally implicit TLS on a
	// second address.
	TLSCertFile       string `toml:"tls_cert_file"`
	TLSKeyFile        string `toml:"tls_key_file"`
	ImplicitTLSListen string `toml:"implicit_tls_listen"`
	// Inbound AUTH.
	AuthUsersFile   string `toml:"auth_users_file"`
	AuthRequired    bool   `toml:"auth_required"`
	AuthMaxFailures int    `toml:"auth_max_failures"`
	// Connection limits; beyond them a client gets 421 and is closed.
	MaxConnections      int `toml:"max_connections"`
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
}

// Queue is the [queue] table: the spool and the delivery schedule.
type Queue struct {
	Dir             string   `toml:"dir"`
	RetryMin        Duration `toml:"retry_min"`
	RetryMax        Duration `toml:"retry_max"`
	MaxAge          Duration `toml:"max_age"`
	Workers         int      `toml:"workers"`
	ConnectTimeout  Duration `toml:"connect_timeout"`
	DeliveryTimeout Duration `toml:"delivery_timeout"`
	// DelayWarning is the age at which a "delayed" DSN goes to the sender
	// (0: never); CertExpiryWarning the window for the early warning of an
	// upstream certificate about to expire (0: off).
	DelayWarning      Duration `toml:"delay_warning"`
	CertExpiryWarning Duration `toml:"cert_expiry_warning"`
	// Verified upstream connections are kept open this long between
	// messages (0: a new connection per delivery), for at most this many
	// messages each, and reused for at most UpstreamMaxAge after they were
	// verified.
	UpstreamIdleTimeout Duration `toml:"upstream_idle_timeout"`
	UpstreamMaxMessages int      `toml:"upstream_max_messages"`
	UpstreamMaxAge      Duration `toml:"upstream_max_age"`
}

// Metrics is the [metrics] table.
type Metrics struct {
	// Listen is where /metrics, /healthz and /readyz are served; empty: off.
	Listen string `toml:"listen"`
}

// Log is the [log] table.
type Log struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration struct{ time.Duration }

// UnmarshalText parses a duration such as "30s", "5m" or "72h".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration; write e.g. \"30s\", \"5m\" or \"72h\"", b)
	}
	if v < 0 {
		return fmt.Errorf("%q is negative", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration back in the same form.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// maxUpstreamMaxAge bounds upstream_max_age: a pooled connection is
// verified again at least once a day.
const maxUpstreamMaxAge = 24 * time.Hour

// Default returns the configuration used for keys the file leaves out.
func Default() *Config {
	return &Config{
		Server: Server{
			Listen:              "127.0.0.1:2525",
			Hostname:            defaultHostname(),
			AllowedNetworks:     []string{"127.0.0.0/8", "::1/128"},
			MaxMessageBytes:     25 << 20,
			MaxRecipients:       100,
			ReadTimeout:         Duration{5 * time.Minute},
			WriteTimeout:        Duration{5 * time.Minute},
			ShutdownTimeout:     Duration{30 * time.Second},
			AuthMaxFailures:     3,
			MaxConnections:      1000,
			MaxConnectionsPerIP: 100,
		},
		Queue: Queue{
			Dir:                 "/var/spool/tlsrelay",
			RetryMin:            Duration{30 * time.Second},
			RetryMax:            Duration{30 * time.Minute},
			MaxAge:              Duration{72 * time.Hour},
			Workers:             16,
			ConnectTimeout:      Duration{30 * time.Second},
			DeliveryTimeout:     Duration{10 * time.Minute},
			DelayWarning:        Duration{4 * time.Hour},
			CertExpiryWarning:   Duration{30 * 24 * time.Hour},
			UpstreamIdleTimeout: Duration{30 * time.Second},
			UpstreamMaxMessages: 1000,
			UpstreamMaxAge:      Duration{5 * time.Minute},
		},
		Log:      Log{Level: "info", Format: "auto"},
		Sendmail: DefaultSendmail(),
		DNS:      DNS{Resolver: "127.0.0.1:53"},
	}
}

func defaultHostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// Load reads, checks and compiles the configuration file at path. A file
// that does not load gives Errors: every mistake that can be found.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, string(src))
}

// Parse checks and compiles a configuration given as text; name is used
// in error messages. It reports every mistake it can find at once, as
// Errors; it stops early only where later checks need what is wrong (a
// syntax error: nothing after it can be read).
func Parse(name, src string) (*Config, error) {
	c := Default()
	c.Path = name
	p := &problems{file: name}
	if decode(c, src, p) {
		c.check(src, p)
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// MaxRecipientsLimit is the upper bound of max_recipients: that many
// addresses of the longest kind (256 octets, each escaped to 6 bytes in the
// spool's encoding) and the rest of an envelope stay well inside the
// spool's envelope limit (4 MiB), so a configuration can never promise what
// the spool cannot store. Postfix's default is 1000.
const MaxRecipientsLimit = 2000

// check validates the decoded values and compiles the destinations,
// adding each mistake to p. To add a check, add one p.add(bad(...)) line;
// guard it with p.ok(...) when it reads another key's value.
func (c *Config) check(src string, p *problems) {
	bad := func(table, key, format string, args ...any) *Error {
		return newError(c.Path, lineOf(src, table, -1, key), table+"."+key, fmt.Sprintf(format, args...))
	}
	s := &c.Server
	if _, _, err := net.SplitHostPort(s.Listen); err != nil {
		p.add(bad("server", "listen", "%q is not host:port; write e.g. \"127.0.0.1:2525\"", s.Listen))
	}
	if s.Hostname == "" || strings.ContainsAny(s.Hostname, " \t\r\n") {
		p.add(bad("server", "hostname", "%q is not a host name; write the name this relay has in DNS, e.g. \"relay.example.com\"", s.Hostname))
	}
	c.Networks = nil
	for _, n := range s.AllowedNetworks {
		pfx, err := netip.ParsePrefix(n)
		if err != nil {
			if a, aerr := netip.ParseAddr(n); aerr == nil {
				pfx = netip.PrefixFrom(a, a.BitLen())
			} else {
				p.add(bad("server", "allowed_networks", "%q is not a network; write CIDR such as \"10.0.0.0/8\" or \"::1/128\"", n))
				continue
			}
		}
		c.Networks = append(c.Networks, pfx.Masked())
	}
	if s.MaxMessageBytes <= 0 {
		p.add(bad("server", "max_message_bytes", "must be positive; write e.g. max_message_bytes = 26214400 (25 MiB)"))
	}
	if s.MaxRecipients <= 0 {
		p.add(bad("server", "max_recipients", "must be positive; write e.g. max_recipients = 100"))
	}
	if s.MaxRecipients > MaxRecipientsLimit {
		p.add(bad("server", "max_recipients", "%d is more than %d, the most one transaction's envelope can hold in the spool; write at most %d", s.MaxRecipients, MaxRecipientsLimit, MaxRecipientsLimit))
	}
	c.checkInbound(bad, p)
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			p.add(bad("metrics", "listen", "%q is not host:port; write e.g. \"127.0.0.1:9025\"", c.Metrics.Listen))
		}
	}
	q := &c.Queue
	if q.Dir == "" {
		p.add(bad("queue", "dir", "required: the spool directory; write e.g. dir = \"/var/spool/tlsrelay\""))
	}
	if q.RetryMin.Duration <= 0 {
		p.add(bad("queue", "retry_min", "must be more than 0; write e.g. retry_min = \"30s\""))
	}
	if q.RetryMax.Duration < q.RetryMin.Duration && p.ok("queue.retry_min") {
		p.add(bad("queue", "retry_max", "%s is less than retry_min (%s); write a duration of at least %s", q.RetryMax, q.RetryMin, q.RetryMin))
	}
	if q.MaxAge.Duration <= 0 {
		p.add(bad("queue", "max_age", "must be more than 0; write e.g. max_age = \"72h\""))
	}
	if q.UpstreamMaxMessages <= 0 {
		p.add(bad("queue", "upstream_max_messages", "must be positive; write e.g. upstream_max_messages = 1000"))
	}
	if q.UpstreamMaxAge.Duration <= 0 || q.UpstreamMaxAge.Duration > maxUpstreamMaxAge {
		p.add(bad("queue", "upstream_max_age", "%s is out of range: it must be more than 0s and at most 24h; write e.g. upstream_max_age = \"5m\" (the default), or to stop reusing connections set upstream_idle_timeout = \"0s\" instead", q.UpstreamMaxAge))
	}
	if q.Workers <= 0 || q.Workers > 1024 {
		p.add(bad("queue", "workers", "must be between 1 and 1024; write e.g. workers = 16"))
	}
	c.checkSendmail(bad, p)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add(bad("log", "level", "%q is not a level; write debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "auto", "text", "json":
	default:
		p.add(bad("log", "format", "%q is not a format; write auto, text or json", c.Log.Format))
	}
	c.checkDestinations(src, p)
	c.checkDNS(bad, p)
	c.checkTLSRPT(bad, p)
	if len(c.DKIM) > 0 && !p.undecodedUnder("dkim") {
		signer, err := signing.Load(c.DKIM)
		if err != nil {
			p.add(&Error{File: c.Path, Line: lineOf(src, "dkim", 0, "domain"), Msg: err.Error()})
		}
		c.Signer = signer
	}
}

// checkDestinations compiles every [[destination]], each on its own: the
// mistakes of all of them are reported. Two destinations claiming one
// domain are looked for among those that compiled.
func (c *Config) checkDestinations(src string, p *problems) {
	if len(c.Destination) == 0 {
		if p.ok("destination") {
			p.add(&Error{File: c.Path, Key: "destination", Msg: "no [[destination]] is configured, so every recipient would be refused; add one (see config.example.toml)"})
		}
		return
	}
	var dests []*policy.Destination
	var index []int // index[i] is the [[destination]] of dests[i]
	for i, spec := range c.Destination {
		d, err := policy.Compile(spec)
		if err != nil {
			for _, err := range joined(err) {
				var fe *policy.FieldError
				if errors.As(err, &fe) {
					p.add(newError(c.Path, lineOf(src, "destination", i, fe.Key),
						fmt.Sprintf("destination[%d].%s", i+1, fe.Key), fe.Message))
				} else {
					p.add(&Error{File: c.Path, Key: fmt.Sprintf("destination[%d]", i+1), Msg: err.Error()})
				}
			}
			continue
		}
		dests = append(dests, d)
		index = append(index, i)
	}
	for {
		t, err := policy.NewTable(dests)
		var de *policy.DuplicateDomainError
		if errors.As(err, &de) {
			// Report it in the numbering of the file, and look on
			// without the second claimant.
			dup := &policy.DuplicateDomainError{Pattern: de.Pattern, First: index[de.First], Then: index[de.Then]}
			p.add(newError(c.Path, lineOf(src, "destination", dup.Then, "domains"),
				fmt.Sprintf("destination[%d].domains", dup.Then+1), dup.Error()))
			dests = slices.Delete(dests, de.Then, de.Then+1)
			index = slices.Delete(index, de.Then, de.Then+1)
			continue
		}
		var ae *policy.AmbiguousRouteError
		if errors.As(err, &ae) {
			amb := *ae
			amb.First, amb.Then = index[ae.First], index[ae.Then]
			p.add(newError(c.Path, lineOf(src, "destination", amb.Then, "senders"),
				fmt.Sprintf("destination[%d].senders", amb.Then+1), amb.Error()))
			dests = slices.Delete(dests, ae.Then, ae.Then+1)
			index = slices.Delete(index, ae.Then, ae.Then+1)
			continue
		}
		if err != nil {
			p.add(&Error{File: c.Path, Msg: err.Error()})
		}
		c.Table = t
		return
	}
}

// joined returns the errors err joins (errors.Join), or err alone.
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
