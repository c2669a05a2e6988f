package policy

import "strings"

// Provider is a preset for a well-known mail provider: where its
// submission server is and how it issues OAuth tokens. Every value it
// fills in can be overridden by the destination's own keys.
type Provider struct {
	Name     string
	Upstream string // host:port of the submission server
	TLS      Mode
	// Flows the provider supports for SMTP, the first being the default.
	Flows []Flow
	// Endpoints; "{tenant}" is replaced by the destination's tenant.
	TokenURL      string
	DeviceAuthURL string // "" when the provider has no device flow for mail
	AuthURL       string // the authorization endpoint of the code flow
	// Scopes per flow.
	Scopes map[Flow][]string
	// NeedsTenant is set when the endpoints need a tenant.
	NeedsTenant bool
}

// The provider presets.
var (
	Microsoft365 = &Provider{
		Name:          "microsoft365",
		Upstream:      "smtp.office365.com:587",
		TLS:           StartTLS,
		Flows:         []Flow{ClientCredentials, RefreshToken},
		TokenURL:      "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
		DeviceAuthURL: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
		AuthURL:       "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
		Scopes: map[Flow][]string{
			ClientCredentials: {"https://outlook.office365.com/.default"},
			RefreshToken:      {"https://outlook.office.com/SMTP.Send", "offline_access"},
		},
		NeedsTenant: true,
	}
	Gmail = &Provider{
		Name:     "gmail",
		Upstream: "smtp.gmail.com:587",
		TLS:      StartTLS,
		Flows:    []Flow{JWTBearer, RefreshToken},
		TokenURL: "https://oauth2.googleapis.com/token",
		AuthURL:  "https://accounts.google.com/o/oauth2/v2/auth",
		Scopes: map[Flow][]string{
			JWTBearer:    {"https://mail.google.com/"},
			RefreshToken: {"https://mail.google.com/"},
		},
	}
)

// Providers lists the presets by name.
var Providers = map[string]*Provider{Microsoft365.Name: Microsoft365, Gmail.Name: Gmail}

// endpoint fills the tenant into one of the provider's URL templates.
func (p *Provider) endpoint(tmpl, tenant string) string {
	return strings.ReplaceAll(tmpl, "{tenant}", tenant)
}

func (p *Provider) supports(f Flow) bool {
	for _, g := range p.Flows {
		if g == f {
			return true
		}
	}
	return false
}
