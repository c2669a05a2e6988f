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
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

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
	Destination []policy.Spec  `toml:"destination"`
	DKIM        []signing.Spec `toml:"dkim"`
	Sendmail    Sendmail       `toml:"sendmail"`

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
	// messages each.
	UpstreamIdleTimeout Duration `toml:"upstream_idle_timeout"`
	UpstreamMaxMessages int      `toml:"upstream_max_messages"`
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
		},
		Log:      Log{Level: "info", Format: "auto"},
		Sendmail: DefaultSendmail(),
	}
}

func defaultHostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

// Error is a configuration error: the file, the key and, when it could be
// found, the line.
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // e.g. "destination[2].min_tls"
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key == "" {
		return fmt.Sprintf("%s: %s", loc, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
}

var decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// Load reads, checks and compiles the configuration file at path.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, string(src))
}

// Parse checks and compiles a configuration given as text; name is used
// in error messages.
func Parse(name, src string) (*Config, error) {
	c := Default()
	md, err := toml.Decode(src, c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" {
				return nil, &Error{File: name, Line: pe.Position.Line, Key: pe.LastKey, Msg: msg}
			}
			return nil, &Error{File: name, Line: pe.Position.Line, Msg: msg}
		}
		// Type mismatches come back as plain errors with the position in
		// the text; lift it out so every error reads the same way.
		if m := decodeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &Error{File: name, Line: line, Key: m[2], Msg: m[3]}
		}
		return nil, &Error{File: name, Msg: err.Error()}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, &Error{File: name, Line: lineOfKey(src, k), Key: displayKey(k),
			Msg: "unknown key; check its spelling against config.example.toml"}
	}
	c.Path = name
	c.explicitNetworks = md.IsDefined("server", "allowed_networks")
	if err := c.check(src); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) check(src string) error {
	bad := func(table, key, format string, args ...any) error {
		return &Error{File: c.Path, Line: lineOf(src, table, -1, key), Key: table + "." + key, Msg: fmt.Sprintf(format, args...)}
	}
	s := &c.Server
	if _, _, err := net.SplitHostPort(s.Listen); err != nil {
		return bad("server", "listen", "%q is not host:port; write e.g. \"127.0.0.1:2525\"", s.Listen)
	}
	if s.Hostname == "" || strings.ContainsAny(s.Hostname, " \t\r\n") {
		return bad("server", "hostname", "%q is not a host name", s.Hostname)
	}
	c.Networks = nil
	for _, n := range s.AllowedNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			if a, aerr := netip.ParseAddr(n); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				return bad("server", "allowed_networks", "%q is not a network; write CIDR such as \"10.0.0.0/8\" or \"::1/128\"", n)
			}
		}
		c.Networks = append(c.Networks, p.Masked())
	}
	if s.MaxMessageBytes <= 0 {
		return bad("server", "max_message_bytes", "must be positive")
	}
	if s.MaxRecipients <= 0 {
		return bad("server", "max_recipients", "must be positive")
	}
	if err := c.checkInbound(bad); err != nil {
		return err
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			return bad("metrics", "listen", "%q is not host:port; write e.g. \"127.0.0.1:9025\"", c.Metrics.Listen)
		}
	}
	q := &c.Queue
	if q.Dir == "" {
		return bad("queue", "dir", "required: the spool directory")
	}
	if q.RetryMin.Duration <= 0 {
		return bad("queue", "retry_min", "must be more than 0")
	}
	if q.RetryMax.Duration < q.RetryMin.Duration {
		return bad("queue", "retry_max", "%s is less than retry_min (%s)", q.RetryMax, q.RetryMin)
	}
	if q.MaxAge.Duration <= 0 {
		return bad("queue", "max_age", "must be more than 0")
	}
	if q.UpstreamMaxMessages <= 0 {
		return bad("queue", "upstream_max_messages", "must be positive")
	}
	if q.Workers <= 0 || q.Workers > 1024 {
		return bad("queue", "workers", "must be between 1 and 1024")
	}
	if err := c.checkSendmail(bad); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log", "level", "%q is not a level; write debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "auto", "text", "json":
	default:
		return bad("log", "format", "%q is not a format; write auto, text or json", c.Log.Format)
	}

	if len(c.Destination) == 0 {
		return &Error{File: c.Path, Key: "destination", Msg: "no [[destination]] is configured, so every recipient would be refused; add one (see config.example.toml)"}
	}
	dests := make([]*policy.Destination, 0, len(c.Destination))
	for i, spec := range c.Destination {
		d, err := policy.Compile(spec)
		if err != nil {
			var fe *policy.FieldError
			if errors.As(err, &fe) {
				return &Error{File: c.Path, Line: lineOf(src, "destination", i, fe.Key),
					Key: fmt.Sprintf("destination[%d].%s", i+1, fe.Key), Msg: fe.Message}
			}
			return &Error{File: c.Path, Key: fmt.Sprintf("destination[%d]", i+1), Msg: err.Error()}
		}
		dests = append(dests, d)
	}
	t, err := policy.NewTable(dests)
	if err != nil {
		var de *policy.DuplicateDomainError
		if errors.As(err, &de) {
			return &Error{File: c.Path, Line: lineOf(src, "destination", de.Then, "domains"),
				Key: fmt.Sprintf("destination[%d].domains", de.Then+1), Msg: err.Error()}
		}
		return &Error{File: c.Path, Msg: err.Error()}
	}
	c.Table = t
	if len(c.DKIM) > 0 {
		signer, err := signing.Load(c.DKIM)
		if err != nil {
			return &Error{File: c.Path, Line: lineOf(src, "dkim", 0, "domain"), Msg: err.Error()}
		}
		c.Signer = signer
	}
	return nil
}

func displayKey(k toml.Key) string {
	return strings.Join(k, ".")
}
