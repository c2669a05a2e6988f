package policy

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestProviderPresetsFillAndYield(t *testing.T) {
	t.Setenv("M365_SECRET", "s")
	d, err := Compile(Spec{Domains: []string{"*"}, Provider: "microsoft365", OAuth: &OAuthSpec{
		Tenant: "contoso.onmicrosoft.com", ClientID: "c", ClientSecretEnv: "M365_SECRET", Mailbox: "app@contoso.com"}})
	if err != nil {
		t.Fatal(err)
	}
	o := d.OAuth
	if d.Upstream != "smtp.office365.com:587" || d.Mode != StartTLS || d.RequireHostname[0] != "smtp.office365.com" ||
		o.Flow != ClientCredentials || o.TokenURL != "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token" ||
		!reflect.DeepEqual(o.Scopes, []string{"https://outlook.office365.com/.default"}) || d.AuthMechanism != MechAuto {
		t.Errorf("microsoft365 preset: %+v %+v", d, o)
	}
	dir := t.TempDir()
	d, err = Compile(Spec{Domains: []string{"*"}, Provider: "microsoft365", Upstream: "smtp-legacy.office365.com:587", AuthMechanism: "oauthbearer",
		OAuth: &OAuthSpec{Flow: "refresh_token", Tenant: "organizations", ClientID: "c", Mailbox: "me@contoso.com",
			RefreshTokenFile: filepath.Join(dir, "rt"), TokenURL: "https://idp.example/token"}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Upstream != "smtp-legacy.office365.com:587" || d.OAuth.TokenURL != "https://idp.example/token" || d.AuthMechanism != MechOAuthBearer ||
		!reflect.DeepEqual(d.OAuth.Scopes, []string{"https://outlook.office.com/SMTP.Send", "offline_access"}) ||
		d.OAuth.DeviceAuthURL != "https://login.microsoftonline.com/organizations/oauth2/v2.0/devicecode" {
		t.Errorf("overrides: %+v %+v", d, d.OAuth)
	}
	d, err = Compile(Spec{Domains: []string{"*"}, Provider: "gmail", AuthUsername: "me@gmail.com", AuthPasswordEnv: "M365_SECRET"})
	if err != nil || d.Upstream != "smtp.gmail.com:587" || d.OAuth != nil {
		t.Errorf("gmail with an app password: %v %+v", err, d)
	}
}

func TestOAuthConfigErrors(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte("x"), 0o644)
	t.Setenv("SET_SECRET", "s")
	base := func() Spec {
		return Spec{Domains: []string{"example.com"}, Upstream: "smtp.example.com:587", OAuth: &OAuthSpec{Flow: "client_credentials",
			Mailbox: "a@example.com", ClientID: "c", ClientSecretEnv: "SET_SECRET", TokenURL: "https://idp.example/token", Scopes: []string{"s"}}}
	}
	cases := []struct {
		name   string
		change func(*Spec)
		key    string
		says   string
	}{
		{"unknown provider", func(s *Spec) { s.Provider = "yahoo" }, "provider", "not a known provider"},
		{"unknown flow", func(s *Spec) { s.OAuth.Flow = "password" }, "oauth.flow", "is not a flow"},
		{"no flow without preset", func(s *Spec) { s.OAuth.Flow = "" }, "oauth.flow", "required"},
		{"flow the provider lacks", func(s *Spec) { s.Provider = "gmail"; s.OAuth.Flow = "client_credentials" }, "oauth.flow", "does not offer"},
		{"no mailbox", func(s *Spec) { s.OAuth.Mailbox = "" }, "oauth.mailbox", "required"},
		{"no tenant", func(s *Spec) { s.Provider = "microsoft365"; s.OAuth.TokenURL = "" }, "oauth.tenant", "required for microsoft365"},
		{"no client id", func(s *Spec) { s.OAuth.ClientID = "" }, "oauth.client_id", "required"},
		{"no secret", func(s *Spec) { s.OAuth.ClientSecretEnv = "" }, "oauth.client_secret_env", "needs a client secret"},
		{"secret unset", func(s *Spec) { s.OAuth.ClientSecretEnv = "TLSRELAY_SURELY_UNSET" }, "oauth.client_secret_env", "not set"},
		{"secret file readable by others", func(s *Spec) { s.OAuth.ClientSecretEnv = ""; s.OAuth.ClientSecretFile = loose }, "oauth.client_secret_file", "chmod 600"},
		{"both secrets", func(s *Spec) { s.OAuth.ClientSecretFile = loose }, "oauth.client_secret_env", "not both"},
		{"plain http", func(s *Spec) { s.OAuth.TokenURL = "http://idp.example/token" }, "oauth.token_url", "is not https"},
		{"no token url", func(s *Spec) { s.OAuth.TokenURL = "" }, "oauth.token_url", "required without a provider"},
		{"no scopes", func(s *Spec) { s.OAuth.Scopes = nil }, "oauth.scopes", "required without a provider"},
		{"password and oauth", func(s *Spec) { s.AuthUsername = "u"; s.AuthPasswordEnv = "SET_SECRET" }, "oauth", "not both"},
		{"jwt without key", func(s *Spec) { s.OAuth.Flow = "jwt_bearer" }, "oauth.service_account_file", "required"},
		{"key readable by others", func(s *Spec) { s.OAuth.Flow = "jwt_bearer"; s.OAuth.ServiceAccountFile = loose }, "oauth.service_account_file", "chmod 600"},
		{"refresh without file", func(s *Spec) { s.OAuth.Flow = "refresh_token" }, "oauth.refresh_token_file", "required"},
		{"refresh file in no dir", func(s *Spec) { s.OAuth.Flow = "refresh_token"; s.OAuth.RefreshTokenFile = "/nonexistent/dir/rt" }, "oauth.refresh_token_file", "does not exist"},
		{"refresh file readable by others", func(s *Spec) { s.OAuth.Flow = "refresh_token"; s.OAuth.RefreshTokenFile = loose }, "oauth.refresh_token_file", "chmod 600"},
		{"refresh file with another flow", func(s *Spec) { s.OAuth.RefreshTokenFile = loose }, "oauth.refresh_token_file", "only the refresh_token flow"},
		{"certificate without key", func(s *Spec) { s.OAuth.ClientCertFile = loose }, "oauth.client_cert_file", "go together"},
		{"certificate and secret", func(s *Spec) { s.OAuth.ClientCertFile = loose; s.OAuth.ClientKeyFile = loose }, "oauth.client_cert_file", "not both"},
		{"certificate for a refresh token", func(s *Spec) {
			s.OAuth.ClientSecretEnv = ""
			s.OAuth.Flow = "refresh_token"
			s.OAuth.RefreshTokenFile = filepath.Join(dir, "rt")
			s.OAuth.ClientCertFile, s.OAuth.ClientKeyFile = loose, loose
		}, "oauth.client_cert_file", "client_credentials flow"},
		{"bad ca file", func(s *Spec) { s.OAuth.CAFile = loose }, "oauth.ca_file", "no PEM"},
		{"xoauth2 without oauth", func(s *Spec) { s.OAuth = nil; s.AuthMechanism = "xoauth2" }, "auth_mechanism", "needs OAuth"},
		{"plain with oauth", func(s *Spec) { s.AuthMechanism = "plain" }, "auth_mechanism", "needs a password"},
		{"unknown mechanism", func(s *Spec) { s.AuthMechanism = "cram-md5" }, "auth_mechanism", "not a mechanism"},
	}
	if _, err := Compile(base()); err != nil {
		t.Fatalf("the base spec does not compile: %v", err)
	}
	for _, c := range cases {
		s := base()
		c.change(&s)
		_, err := Compile(s)
		fe, ok := err.(*FieldError)
		if !ok || fe.Key != c.key || !strings.Contains(fe.Message, c.says) {
			t.Errorf("%s: got %v, want %s: ...%s...", c.name, err, c.key, c.says)
		}
	}
}
