package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"tlsrelay/policy"
	"tlsrelay/relay/address"
	"tlsrelay/relay/config"
)

// routeReport is what `tlsrelay route` says about one recipient.
type routeReport struct {
	Recipient        string           `json:"recipient"`
	Routed           bool             `json:"routed"`
	Refused          string           `json:"refused,omitempty"`
	Destination      string           `json:"destination,omitempty"`
	Index            int              `json:"destination_index,omitempty"` // [[destination]] number, from 1
	RecipientPattern string           `json:"recipient_pattern,omitempty"`
	SenderPattern    string           `json:"sender_pattern,omitempty"`
	Considered       []routeCandidate `json:"considered"`
	Hops             []routeHop       `json:"hops,omitempty"`
	// MXSecurity is set for upstream = "mx": the hops are the recipient
	// domain's mail exchangers, found at delivery time.
	MXSecurity   string         `json:"mx_security,omitempty"`
	TLS          *routeTLS      `json:"tls,omitempty"`
	OnFailure    string         `json:"on_failure,omitempty"`
	Limits       *policy.Limits `json:"limits,omitempty"`
	EnvelopeFrom string         `json:"envelope_from,omitempty"`
	HeaderFrom   string         `json:"header_from,omitempty"`
}

type routeCandidate struct {
	Destination      string `json:"destination"`
	Index            int    `json:"destination_index"`
	RecipientPattern string `json:"recipient_pattern"`
	SenderPattern    string `json:"sender_pattern,omitempty"`
	Verdict          string `json:"verdict"`
}

type routeHop struct {
	Upstream        string   `json:"upstream"`
	RequireHostname []string `json:"require_hostname"`
	ServerName      string   `json:"server_name"`
}

type routeTLS struct {
	Mode   string   `json:"mode"`
	MinTLS string   `json:"min_tls"`
	Trust  string   `json:"trust"`
	Pins   []string `json:"pins"`
}

// cmdRoute explains, for a sender and recipients, which destination each
// recipient goes to and why, under a configuration file; it sends
// nothing. Exit 0: every recipient has a route; 1: one is refused; 2:
// usage or configuration error.
func cmdRoute(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("route", stderr)
	cfgPath := fs.String("config", "", "configuration `file` (TOML)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() < 2 {
		fmt.Fprintln(stderr, "tlsrelay route: want a sender (\"<>\" for the null sender) and at least one recipient")
		fs.Usage()
		return exitUsage
	}
	var sender address.Address
	if raw := strings.Trim(fs.Arg(0), "<>"); raw != "" {
		var err error
		if sender, err = address.Parse(raw, true); err != nil {
			fmt.Fprintf(stderr, "tlsrelay route: sender %q: %v\n", fs.Arg(0), err)
			return exitUsage
		}
	}
	var rcpts []address.Address
	for _, raw := range fs.Args()[1:] {
		a, err := address.Parse(strings.Trim(raw, "<>"), true)
		if err != nil {
			fmt.Fprintf(stderr, "tlsrelay route: recipient %q: %v\n", raw, err)
			return exitUsage
		}
		rcpts = append(rcpts, a)
	}
	cfg, _, _, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitUsage
	}
	rc := 0
	var reports []routeReport
	for _, a := range rcpts {
		r := explainRoute(cfg, sender, a)
		if !r.Routed {
			rc = 1
		}
		reports = append(reports, r)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		enc.Encode(struct {
			Sender     string        `json:"sender"`
			Recipients []routeReport `json:"recipients"`
		}{sender.String(), reports})
		return rc
	}
	from := "<" + sender.String() + ">"
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		r.writeText(stdout, from)
	}
	return rc
}

// explainRoute routes one recipient as the relay would.
func explainRoute(cfg *config.Config, sender, rcpt address.Address) routeReport {
	dests := cfg.Table.Destinations()
	index := func(d *policy.Destination) int { return slices.Index(dests, d) + 1 }
	route := cfg.Table.Route(policy.Sender{Local: sender.Local, Domain: sender.Domain}, rcpt.Domain)
	r := routeReport{Recipient: rcpt.String(), Considered: []routeCandidate{}}
	for _, c := range route.Considered {
		r.Considered = append(r.Considered, routeCandidate{Destination: c.Destination.Name(), Index: index(c.Destination),
			RecipientPattern: c.Recipient, SenderPattern: c.Sender, Verdict: c.Verdict})
	}
	d := route.Destination
	if d == nil {
		r.Refused = "no [[destination]] claims " + rcpt.Domain
		if len(route.Considered) > 0 {
			r.Refused = "the [[destination]]s that claim " + rcpt.Domain + " are for other senders"
		}
		r.Refused += ": the relay answers 550 5.7.1 at RCPT"
		return r
	}
	r.Routed, r.Destination, r.Index = true, d.Name(), index(d)
	r.RecipientPattern, r.SenderPattern = route.Recipient, route.Sender
	for _, h := range d.Hops() {
		r.Hops = append(r.Hops, routeHop{Upstream: h.Upstream, RequireHostname: h.RequireHostname, ServerName: h.ServerName})
	}
	if d.IsMX() {
		r.MXSecurity = string(d.MXSecurity)
	}
	trust := "system roots"
	if d.CAFile != "" {
		trust = "ca_file " + d.CAFile
	}
	r.TLS = &routeTLS{Mode: string(d.Mode), MinTLS: strings.TrimPrefix(tls.VersionName(d.MinTLS), "TLS "), Trust: trust, Pins: append([]string{}, d.Pins...)}
	r.OnFailure = string(d.OnFailure)
	lim := d.Limits
	r.Limits = &lim
	r.EnvelopeFrom = d.Rewrite.EnvelopeFrom
	if d.Rewrite.HeaderFrom {
		r.HeaderFrom = "rewrite"
	}
	return r
}

func (r *routeReport) writeText(w io.Writer, from string) {
	line := func(k, format string, a ...any) {
		if k != "" {
			k += ":"
		}
		fmt.Fprintf(w, "  %-12s %s\n", k, fmt.Sprintf(format, a...))
	}
	if !r.Routed {
		fmt.Fprintf(w, "%s from %s: REFUSED: %s\n", r.Recipient, from, r.Refused)
	} else {
		fmt.Fprintf(w, "%s from %s: destination #%d %s\n", r.Recipient, from, r.Index, r.Destination)
		why := fmt.Sprintf("recipient pattern %q", r.RecipientPattern)
		if r.SenderPattern != "" {
			why = fmt.Sprintf("sender pattern %q and ", r.SenderPattern) + why
		} else {
			why += ", any sender"
		}
		line("matched", "%s", why)
	}
	for i, c := range r.Considered {
		k := ""
		if i == 0 {
			k = "considered"
		}
		pat := fmt.Sprintf("%q", c.RecipientPattern)
		if c.SenderPattern != "" {
			pat += fmt.Sprintf(" from %q", c.SenderPattern)
		}
		line(k, "#%d %s by %s: %s", c.Index, c.Destination, pat, c.Verdict)
	}
	if !r.Routed {
		return
	}
	for i, h := range r.Hops {
		if r.MXSecurity != "" {
			line("hops", "the recipient domain's mail exchangers, found at delivery time, mx_security=%s (tlsrelay check -config FILE DOMAIN shows them)", r.MXSecurity)
			break
		}
		k := ""
		if i == 0 {
			k = "hops"
		}
		line(k, "%d. %s (require_hostname=%s server_name=%s)", i+1, h.Upstream, strings.Join(h.RequireHostname, ","), h.ServerName)
	}
	pins := "none"
	if len(r.TLS.Pins) > 0 {
		pins = strings.Join(r.TLS.Pins, ", ")
	}
	line("tls", "tls=%s min_tls=%s trust=%s pins=%s", r.TLS.Mode, r.TLS.MinTLS, r.TLS.Trust, pins)
	line("on_failure", "%s", r.OnFailure)
	limit := func(n int) string {
		if n == 0 {
			return "none"
		}
		return fmt.Sprint(n)
	}
	line("limits", "max_connections=%s max_messages_per_minute=%s max_recipients_per_message=%s",
		limit(r.Limits.MaxConnections), limit(r.Limits.MaxMessagesPerMinute), limit(r.Limits.MaxRecipientsPerMessage))
	rewrite := "none"
	if r.EnvelopeFrom != "" {
		rewrite = "envelope_from=" + r.EnvelopeFrom
		if r.HeaderFrom != "" {
			rewrite += " header_from=" + r.HeaderFrom + " (at acceptance, before DKIM signing: the From address becomes " +
				r.EnvelopeFrom + ", the display name kept; Reply-To: the original address unless the message has one)"
		}
	}
	line("rewrite", "%s", rewrite)
}
