package tlsrpt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"tlsrelay/relay/address"
	"tlsrelay/relay/dnsx"
)

// Record is a domain's TLS-RPT policy: the TXT record at
// _smtp._tls.<domain> (RFC 8460 §3), parsed.
type Record struct {
	// RUAs are where the domain wants its aggregate reports, in the
	// record's order, duplicates removed.
	RUAs []RUA
}

// RUA is one reporting URI of a record: mailto: or https:.
type RUA struct {
	// URI is the URI as the record writes it (percent-encoding kept): the
	// key of the sent ledger and what logs show.
	URI string
	// Mailto is the address of a mailto: URI (percent-decoded), "" for
	// https:.
	Mailto string
	// HTTPS is the URL of an https: URI, nil for mailto:.
	HTTPS *url.URL
}

// RecordName is the DNS name of domain's TLS-RPT record.
func RecordName(domain string) string { return "_smtp._tls." + domain }

// ErrNoRecord is a domain that publishes no TLS-RPT record (no TXT record
// at _smtp._tls.<domain> that starts with v=TLSRPTv1, or the name does not
// exist): its reports are not sent.
var ErrNoRecord = errors.New("the domain publishes no TLS-RPT record (_smtp._tls TXT with v=TLSRPTv1)")

// RecordError is a TLS-RPT record that cannot be used: malformed, or
// more than one of them (RFC 8460 §3: then the domain is taken not to
// implement TLS-RPT).
type RecordError struct {
	Domain string
	// Record is the TXT record's text (bounded), or "" for the count.
	Record string
	Reason string
}

func (e *RecordError) Error() string {
	if e.Record == "" {
		return fmt.Sprintf("TLS-RPT record of %s: %s", e.Domain, e.Reason)
	}
	return fmt.Sprintf("TLS-RPT record of %s (%.200q): %s", e.Domain, e.Record, e.Reason)
}

// maxRUAs bounds the URIs of one record that reports are sent to.
const maxRUAs = 10

// LookupRecord asks res for domain's TLS-RPT record. Records that do not
// start with "v=TLSRPTv1" are not TLS-RPT records and are ignored; none
// left is ErrNoRecord, more than one a *RecordError (RFC 8460 §3), as is a
// malformed one. A failed lookup is the resolver's error (try later).
func LookupRecord(ctx context.Context, res dnsx.Resolver, domain string) (*Record, error) {
	txt, err := res.TXT(ctx, RecordName(domain))
	if dnsx.NotFound(err) {
		return nil, ErrNoRecord
	}
	if err != nil {
		return nil, err
	}
	var found []string
	for _, r := range txt.Records {
		if isTLSRPT(r) {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return nil, ErrNoRecord
	case 1:
	default:
		return nil, &RecordError{Domain: domain, Reason: fmt.Sprintf("%d records start with v=TLSRPTv1; RFC 8460 says a domain with more than one has none", len(found))}
	}
	rec, err := ParseRecord(found[0])
	if err != nil {
		return nil, &RecordError{Domain: domain, Record: found[0], Reason: err.Error()}
	}
	return rec, nil
}

// isTLSRPT reports whether a TXT record is meant as a TLS-RPT record: it
// begins with the version field and its ';' (RFC 8460 §3: other records
// are discarded, so a bare "v=TLSRPTv1" is not counted).
func isTLSRPT(txt string) bool {
	v, _, ok := strings.Cut(txt, ";")
	return ok && strings.TrimRight(v, " \t") == "v=TLSRPTv1"
}

// ParseRecord parses a TLS-RPT record strictly, as RFC 8460 §3 writes it:
//
//	v=TLSRPTv1; rua=<uri>[,<uri>...][; ext=value...][;]
//
// Fields are separated by ';' with optional blanks around it; exactly one
// rua field, a comma-separated list of mailto: and https: URIs (commas and
// '!' inside a URI must be percent-encoded, so a literal '!' — a DMARC-style
// size limit, which TLS-RPT does not have — is refused); extension fields
// are checked for form and ignored. URIs of other schemes are ignored if
// at least one usable URI remains.
func ParseRecord(txt string) (*Record, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimRight(fields[0], " \t") != "v=TLSRPTv1" {
		return nil, errors.New("it does not start with v=TLSRPTv1")
	}
	var rec *Record
	var others []string
	for i, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" && i == len(fields)-2 {
			break // a trailing ';'
		}
		name, value, ok := strings.Cut(f, "=")
		if !ok || !validExtName(name) || value == "" {
			return nil, fmt.Errorf("field %.80q is not name=value", f)
		}
		if name != "rua" {
			if !validExtValue(value) {
				return nil, fmt.Errorf("field %s has a value with characters RFC 8460 does not allow", name)
			}
			continue
		}
		if rec != nil {
			return nil, errors.New("it has more than one rua field")
		}
		rec = &Record{}
		seen := map[string]bool{}
		for _, u := range strings.Split(value, ",") {
			u = strings.Trim(u, " \t")
			rua, err := parseRUA(u)
			if err != nil {
				return nil, err
			}
			if rua == nil {
				others = append(others, u)
				continue
			}
			if !seen[rua.URI] && len(rec.RUAs) < maxRUAs {
				seen[rua.URI] = true
				rec.RUAs = append(rec.RUAs, *rua)
			}
		}
	}
	if rec == nil {
		return nil, errors.New("it has no rua field (where reports go)")
	}
	if len(rec.RUAs) == 0 {
		return nil, fmt.Errorf("no rua URI is mailto: or https: (%.100q)", strings.Join(others, ","))
	}
	return rec, nil
}

// parseRUA parses one URI of a rua list: nil, nil for a well-formed URI
// of another scheme.
func parseRUA(u string) (*RUA, error) {
	if u == "" {
		return nil, errors.New("the rua list has an empty URI")
	}
	for _, c := range []byte(u) {
		switch {
		case c == '!':
			return nil, fmt.Errorf("rua URI %.100q has a '!': TLS-RPT has no size limit, and a '!' in a URI must be written %%21", u)
		case c <= ' ' || c >= 0x7f:
			return nil, fmt.Errorf("rua URI %.100q has a blank, control or non-ASCII character (percent-encode it)", u)
		}
	}
	p, err := url.Parse(u)
	if err != nil {
		return nil, fmt.Errorf("rua URI %.100q: %v", u, err)
	}
	switch strings.ToLower(p.Scheme) {
	case "mailto":
		if p.Opaque == "" || p.RawQuery != "" || p.Fragment != "" {
			return nil, fmt.Errorf("rua URI %.100q is not mailto:<address>", u)
		}
		addr, err := url.PathUnescape(p.Opaque)
		if err != nil {
			return nil, fmt.Errorf("rua URI %.100q: %v", u, err)
		}
		a, err := address.Parse(addr, false)
		if err != nil {
			return nil, fmt.Errorf("rua URI %.100q: %v", u, err)
		}
		return &RUA{URI: u, Mailto: a.String()}, nil
	case "https":
		if p.Host == "" || p.User != nil || p.Fragment != "" {
			return nil, fmt.Errorf("rua URI %.100q is not https://<host>/<path>", u)
		}
		return &RUA{URI: u, HTTPS: p}, nil
	case "":
		return nil, fmt.Errorf("rua URI %.100q has no scheme (write mailto: or https:)", u)
	}
	return nil, nil
}

// validExtName: 1*32(ALPHA / DIGIT / "_" / "-" / ".") (RFC 8460 §3).
func validExtName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// validExtValue: 1*(%x21-3A / %x3C / %x3E-7E) (RFC 8460 §3).
func validExtValue(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x21 || c > 0x7e || c == ';' || c == '=' {
			return false
		}
	}
	return s != ""
}
