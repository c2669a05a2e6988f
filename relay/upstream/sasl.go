package upstream

import (
	"encoding/json"
	"strconv"
)

// The OAuth SASL mechanisms. XOAUTH2 is Google's and Microsoft's (go-sasl
// does not carry it); OAUTHBEARER is RFC 7628's, written here too because
// go-sasl's client answers an error challenge with an error (the relay
// would then cancel with "*") where RFC 7628, 3.2.3, asks for a single
// 0x01 byte. Both record the server's error JSON for the diagnosis.

// oauthError is the JSON a server sends in a 334 challenge when it
// refuses a token (Gmail for XOAUTH2; RFC 7628, 3.2.2 for OAUTHBEARER).
type oauthError struct {
	Status  string `json:"status"`
	Schemes string `json:"schemes"`
	Scope   string `json:"scope"`
	// Raw is the challenge as received, when it is not such JSON.
	Raw string `json:"-"`
}

// parseOAuthError decodes an error challenge, keeping a clipped copy of
// one that is not JSON.
func parseOAuthError(challenge []byte) *oauthError {
	var e oauthError
	if json.Unmarshal(challenge, &e) != nil {
		e = oauthError{Raw: clipText(string(challenge), 200)}
	}
	return &e
}

func (e *oauthError) String() string {
	if e.Raw != "" {
		return "challenge " + strconv.Quote(e.Raw)
	}
	s := "status " + e.Status
	if e.Scope != "" {
		s += ", scope " + e.Scope
	}
	if e.Schemes != "" {
		s += ", schemes " + e.Schemes
	}
	return s
}

// xoauth2Client is the XOAUTH2 mechanism: the initial response is
// "user=" mailbox ^A "auth=Bearer " token ^A ^A; an error challenge is
// answered with an empty response, after which the server sends its
// final (5xx) reply.
type xoauth2Client struct {
	user, token string
	refused     *oauthError
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	c.refused = parseOAuthError(challenge)
	return []byte{}, nil
}

// oauthBearerClient is OAUTHBEARER (RFC 7628): a GS2 header naming the
// user, then host, port and the bearer token; an error challenge is
// answered with a single 0x01 (3.2.3).
type oauthBearerClient struct {
	user, host string
	port       int
	token      string
	refused    *oauthError
}

func (c *oauthBearerClient) Start() (string, []byte, error) {
	s := "n,a=" + gs2Escape(c.user) + ","
	if c.host != "" {
		s += "\x01host=" + c.host
	}
	if c.port != 0 {
		s += "\x01port=" + strconv.Itoa(c.port)
	}
	s += "\x01auth=Bearer " + c.token + "\x01\x01"
	return "OAUTHBEARER", []byte(s), nil
}

func (c *oauthBearerClient) Next(challenge []byte) ([]byte, error) {
	c.refused = parseOAuthError(challenge)
	return []byte{0x01}, nil
}

// gs2Escape escapes ',' and '=' in a GS2 authzid (RFC 5801, 4).
func gs2Escape(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ',':
			out = append(out, "=2C"...)
		case '=':
			out = append(out, "=3D"...)
		default:
			out = append(out, s[i])
		}
	}
	return string(out)
}

func clipText(s string, n int) string {
	out := []rune{}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		out = append(out, r)
		if len(out) >= n {
			return string(out) + "..."
		}
	}
	return string(out)
}
