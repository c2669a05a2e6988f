package config

import (
	"bytes"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// TestOAuthEffectiveValuesShowNoSecret: `config check` shows what a
// provider preset filled in, and names the secret only by its source.
func TestOAuthEffectiveValuesShowNoSecret(t *testing.T) {
	t.Setenv("M365_SECRET", "very-secret-value")
	src := `
[[destination]]
domains = ["*"]
provider = "microsoft365"
[destination.oauth]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_env = "M365_SECRET"
mailbox = "app@contoso.com"
`
	c, err := Parse("test.toml", src)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c.Effective()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{`upstream = "smtp.office365.com:587"`, `tls = "starttls"`, `require_hostname = ["smtp.office365.com"]`,
		`flow = "client_credentials"`, `token_url = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"`,
		`scopes = ["https://outlook.office365.com/.default"]`, `client_secret_env = "M365_SECRET"`, `auth_mechanism = "auto"`} {
		if !strings.Contains(out, want) {
			t.Errorf("effective configuration lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "very-secret-value") {
		t.Error("the secret is shown")
	}

	_, err = Parse("test.toml", src+"client_secrets = \"x\"\n")
	if err == nil || !strings.Contains(err.Error(), "destination.oauth.client_secrets: unknown key") {
		t.Errorf("unknown oauth key: %v", err)
	}
}
