package address

// Reason is the kind of defect that makes an address unacceptable; the
// front door maps it to an SMTP reply code.
type Reason int

// The reasons an address is refused.
const (
	// Malformed: not RFC 5321 syntax (an empty part, stray dots, a bad
	// domain label or address literal).
	Malformed Reason = iota + 1
	// Routing: a legacy form upstreams may re-route on: '@' in the local
	// part (more than one '@'), '%', '!', or a ',' list.
	Routing
	// ControlChar: a control character (a smuggled CR or LF shows up as
	// NUL, see relay/linecheck).
	ControlChar
	// NonASCII: non-ASCII without SMTPUTF8, or a non-ASCII domain.
	NonASCII
	// InvalidUTF8: bytes that are not UTF-8.
	InvalidUTF8
	// TooLong: longer than RFC 5321's limits (see MaxLength).
	TooLong
)

var reasonNames = [...]string{Malformed: "malformed", Routing: "routing form",
	ControlChar: "control character", NonASCII: "non-ASCII", InvalidUTF8: "invalid UTF-8", TooLong: "too long"}

func (r Reason) String() string {
	if r > 0 && int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Error is why a string is not an acceptable envelope address. Detail
// names the defect in words for the client and the operator; it never
// repeats the address itself, which may hold anything.
type Error struct {
	Reason Reason
	Detail string
}

func (e *Error) Error() string { return "invalid address: " + e.Detail }
