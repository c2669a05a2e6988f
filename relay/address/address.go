// Package address parses envelope addresses (the mailbox of MAIL FROM and
// RCPT TO, RFC 5321 4.1.2) once, at the front door, into a typed value,
// and serializes that value back in one canonical form. Everything after
// the front door (routing, sender patterns, the spool, the upstream's
// command lines) works on that value or on its canonical form, never on
// what the client typed.
//
// What is accepted, normalized and refused:
//
//   - The local part is a Dot-string or, when it holds anything else, a
//     Quoted-string; the value is kept (its case too) and written bare when
//     it is a valid Dot-string, quoted (with \" and \\ escaped) otherwise.
//   - The domain is LDH labels (IDNA A-labels "xn--..." are LDH labels), or
//     an address literal [192.0.2.1] / [IPv6:2001:db8::1]. It is lower-cased;
//     one trailing dot is dropped. An all-digit last label is refused (an
//     IP address is written as a literal). A non-ASCII domain (U-labels) is
//     refused, also under SMTPUTF8: it must be written as A-labels.
//   - Refused, because upstreams may re-route on them: '@' in the local part
//     (quoted or not), '%' and '!' anywhere in the local part, ',' lists.
//     Refused as malformed: an empty part, a leading or trailing dot or ".."
//     in the local part (quoted or not: go-smtp hands over the value with
//     its quotes removed, so the two cannot be told apart), '<' or '>' in
//     the local part, a bad label or literal.
//   - Refused: control characters (C0, DEL, C1), invalid UTF-8, non-ASCII
//     unless the transaction is SMTPUTF8, and a canonical form longer than
//     MaxLength octets (the 256-octet path of RFC 5321 4.5.3.1.3 less its
//     angle brackets). The 64-octet local-part limit is not enforced on its
//     own: real mail (SRS, VERP) exceeds it, and the whole address is
//     bounded anyway.
package address

import (
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxLength is the longest canonical address accepted, in octets: the
// 256-octet path of RFC 5321 4.5.3.1.3 without its '<' and '>'.
const MaxLength = 254

// maxDomain is RFC 5321 4.5.3.1.2's limit on a domain, maxLabel RFC 1035's.
const (
	maxDomain = 255
	maxLabel  = 63
)

// Address is a parsed envelope mailbox. The zero Address is the null
// reverse-path <>; its String is "".
type Address struct {
	// Local is the local part's value: quoting removed, case kept.
	Local string
	// Domain is lower-case ASCII: LDH labels without a trailing dot, or an
	// address literal "[192.0.2.1]" / "[IPv6:2001:db8::1]" (the tag
	// written "IPv6", the address in its canonical RFC 5952 form).
	Domain string
}

// IsNull reports whether a is the null reverse-path <>.
func (a Address) IsNull() bool { return a == Address{} }

// String returns the canonical form: local@domain with the local part
// quoted only when it is not a Dot-string. It never holds a CR, LF, '<',
// '>' or a space outside quotes, so it can go between '<' and '>' on an
// SMTP command line as it is.
func (a Address) String() string {
	if a.IsNull() {
		return ""
	}
	if isDotString(a.Local) {
		return a.Local + "@" + a.Domain
	}
	var b strings.Builder
	b.Grow(len(a.Local) + len(a.Domain) + 4)
	b.WriteByte('"')
	for i := 0; i < len(a.Local); i++ {
		if c := a.Local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(a.Local[i])
	}
	b.WriteString(`"@`)
	b.WriteString(a.Domain)
	return b.String()
}

// IsASCII reports whether a can go upstream without SMTPUTF8.
func (a Address) IsASCII() bool { return isASCII(a.Local) && isASCII(a.Domain) }

// ParseDecoded parses an address as go-smtp hands it to a session: the
// local part's quotes and backslashes already removed, so that its value
// may hold spaces, '>' or '@'. Exactly one '@' must separate the local
// part's value from the domain (a second one is refused: see the package
// comment). utf8 is whether the transaction is SMTPUTF8.
func ParseDecoded(s string, utf8 bool) (Address, error) {
	if err := checkOctets(s, utf8); err != nil {
		return Address{}, err
	}
	at := strings.IndexByte(s, '@')
	if at < 0 {
		return Address{}, &Error{Reason: Malformed, Detail: "it has no '@': an address is local-part@domain"}
	}
	if strings.IndexByte(s[at+1:], '@') >= 0 {
		return Address{}, errManyAts
	}
	return build(s[:at], s[at+1:])
}

// Parse parses a mailbox in RFC 5321 syntax: a Dot-string or a
// Quoted-string, '@', a domain; such as String returns (and the spool
// holds). utf8 is whether non-ASCII is allowed.
func Parse(s string, utf8 bool) (Address, error) {
	if err := checkOctets(s, utf8); err != nil {
		return Address{}, err
	}
	var local, rest string
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' {
				if i++; i == len(s) {
					break
				}
			}
			b.WriteByte(s[i])
		}
		if i >= len(s) {
			return Address{}, &Error{Reason: Malformed, Detail: "its quoted local part has no closing '\"'"}
		}
		local, rest = b.String(), s[i+1:]
		if !strings.HasPrefix(rest, "@") {
			return Address{}, &Error{Reason: Malformed, Detail: "its quoted local part is not followed by '@'"}
		}
		rest = rest[1:]
	} else {
		at := strings.IndexByte(s, '@')
		if at < 0 {
			return Address{}, &Error{Reason: Malformed, Detail: "it has no '@': an address is local-part@domain"}
		}
		local, rest = s[:at], s[at+1:]
		if local != "" && !isDotString(local) && !hasRouting(local) {
			return Address{}, &Error{Reason: Malformed, Detail: "its local part holds characters that need quotes but has none"}
		}
	}
	if strings.IndexByte(rest, '@') >= 0 {
		return Address{}, errManyAts
	}
	return build(local, rest)
}

// build checks a local part's value and a domain and makes the Address.
func build(local, domain string) (Address, error) {
	if err := checkLocal(local); err != nil {
		return Address{}, err
	}
	d, err := ParseDomain(domain)
	if err != nil {
		return Address{}, err
	}
	a := Address{Local: local, Domain: d}
	if n := len(a.String()); n > MaxLength {
		return Address{}, &Error{Reason: TooLong, Detail: "it is longer than " + strconv.Itoa(MaxLength) + " octets (" + strconv.Itoa(n) + ")"}
	}
	return a, nil
}

var errManyAts = &Error{Reason: Routing, Detail: "it has more than one '@' (an '@' in the local part, quoted or not, is refused)"}

// checkOctets refuses control characters, invalid UTF-8 and, unless
// utf8, any non-ASCII octet; and bounds the length before any work.
func checkOctets(s string, allowUTF8 bool) error {
	if len(s) > 4*MaxLength {
		return &Error{Reason: TooLong, Detail: "it is longer than " + strconv.Itoa(MaxLength) + " octets (" + strconv.Itoa(len(s)) + ")"}
	}
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return &Error{Reason: ControlChar, Detail: "it contains a control character (CR, LF, NUL or another)"}
		}
		if c >= 0x80 {
			ascii = false
		}
	}
	if ascii {
		return nil
	}
	if !allowUTF8 {
		return &Error{Reason: NonASCII, Detail: "it is not ASCII and the transaction is not SMTPUTF8"}
	}
	if !utf8.ValidString(s) {
		return &Error{Reason: InvalidUTF8, Detail: "it is not valid UTF-8"}
	}
	for _, r := range s {
		if r >= 0x80 && r < 0xa0 {
			return &Error{Reason: ControlChar, Detail: "it contains a control character (U+0080 to U+009F)"}
		}
	}
	return nil
}

// checkLocal checks a local part's value (quotes removed).
func checkLocal(v string) error {
	switch {
	case v == "":
		return &Error{Reason: Malformed, Detail: "its local part is empty"}
	case strings.ContainsRune(v, '@'):
		return errManyAts
	case strings.ContainsAny(v, "%!"):
		return &Error{Reason: Routing, Detail: "its local part holds '%' or '!', old routing forms upstreams may re-route on"}
	case strings.ContainsRune(v, ','):
		return &Error{Reason: Routing, Detail: "its local part holds ',': one address per command"}
	case strings.ContainsAny(v, "<>"):
		return &Error{Reason: Malformed, Detail: "its local part holds '<' or '>'"}
	case v[0] == '.' || v[len(v)-1] == '.' || strings.Contains(v, ".."):
		return &Error{Reason: Malformed, Detail: "its local part starts or ends with a dot or has two dots in a row"}
	}
	return nil
}

// ParseDomain checks a domain and returns its canonical form: lower-case
// LDH labels without a trailing dot, or a canonical address literal.
func ParseDomain(d string) (string, error) {
	if d == "" {
		return "", &Error{Reason: Malformed, Detail: "its domain is empty"}
	}
	if d[0] == '[' {
		return parseLiteral(d)
	}
	d = strings.TrimSuffix(d, ".")
	if len(d) > maxDomain {
		return "", &Error{Reason: TooLong, Detail: "its domain is longer than " + strconv.Itoa(maxDomain) + " octets"}
	}
	if !isASCII(d) {
		return "", &Error{Reason: NonASCII, Detail: "its domain is not ASCII: write it as IDNA A-labels (xn--...)"}
	}
	d = strings.ToLower(d)
	labels := strings.Split(d, ".")
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", err
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", &Error{Reason: Malformed, Detail: "its domain ends in an all-digit label: write an IP address as [192.0.2.1]"}
	}
	return d, nil
}

func checkLabel(l string) error {
	if l == "" {
		return &Error{Reason: Malformed, Detail: "its domain has an empty label (two dots in a row, or a leading dot)"}
	}
	if len(l) > maxLabel {
		return &Error{Reason: Malformed, Detail: "its domain has a label longer than " + strconv.Itoa(maxLabel) + " octets"}
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return &Error{Reason: Malformed, Detail: "its domain has a label that starts or ends with '-'"}
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return &Error{Reason: Malformed, Detail: "its domain holds a character other than letters, digits, '-' and '.'"}
		}
	}
	return nil
}

// parseLiteral checks an address literal: [IPv4] or [IPv6:...].
func parseLiteral(d string) (string, error) {
	bad := &Error{Reason: Malformed, Detail: "its domain is not a valid address literal ([192.0.2.1] or [IPv6:2001:db8::1])"}
	if len(d) < 3 || d[len(d)-1] != ']' {
		return "", bad
	}
	inner := d[1 : len(d)-1]
	if len(inner) > 5 && strings.EqualFold(inner[:5], "IPv6:") {
		ip, err := netip.ParseAddr(inner[5:])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", bad
		}
		return "[IPv6:" + ip.String() + "]", nil
	}
	ip, err := netip.ParseAddr(inner)
	if err != nil || !ip.Is4() {
		return "", bad
	}
	return "[" + ip.String() + "]", nil
}

// isDotString reports whether v can be written bare: atext (or, for
// SMTPUTF8, non-ASCII) separated by single dots.
func isDotString(v string) bool {
	if v == "" || v[0] == '.' || v[len(v)-1] == '.' || strings.Contains(v, "..") {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c != '.' && !isAtext(c) && c < 0x80 {
			return false
		}
	}
	return true
}

// isAtext reports whether c is an ASCII atext character (RFC 5322 3.2.3).
func isAtext(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// hasRouting reports whether v holds a character checkLocal refuses as a
// routing form, so that Parse names that rather than a quoting problem.
func hasRouting(v string) bool { return strings.ContainsAny(v, "%!,") }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
