package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
	"tlsrelay/relay/oauth"
)

// auth logs in to the upstream over the verified connection: with the
// destination's password (PLAIN or LOGIN) or with an OAuth access token
// (XOAUTH2 or OAUTHBEARER). Every failure is a *policy.Failure: class
// auth when the upstream refused, oauth_token when no token was had.
func (c *Conn) auth(ctx context.Context, tokens *oauth.Registry) error {
	c.raw.SetDeadline(time.Now().Add(commandTimeout))
	defer c.raw.SetDeadline(time.Time{})
	if c.Dest.OAuth != nil {
		return c.authOAuth(ctx, tokens)
	}
	return c.authPassword()
}

func (c *Conn) authPassword() error {
	dest := c.Dest
	var mech sasl.Client
	want := dest.AuthMechanism
	switch {
	case (want == policy.MechAuto || want == policy.MechPlain) && c.offersAuth("PLAIN"):
		mech = sasl.NewPlainClient("", dest.AuthUsername, dest.AuthPassword.Reveal())
	case (want == policy.MechAuto || want == policy.MechLogin) && c.offersAuth("LOGIN"):
		mech = sasl.NewLoginClient(dest.AuthUsername, dest.AuthPassword.Reveal())
	default:
		return c.notOffered("AUTH PLAIN nor AUTH LOGIN", "remove auth_username if the server needs no login, or enable PLAIN/LOGIN on it")
	}
	if err := c.authenticate(mech); err != nil {
		f := smtpFailure(dest, "AUTH", err)
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code/100 == 5 {
			f.Class = policy.Auth
			f.Permanent = false // a password can be fixed while mail waits
			f.Detail = fmt.Sprintf("the server refused the login of %q: %d %s", dest.AuthUsername, se.Code, replyText(se))
			f.Fix = "check auth_username and the password (auth_password_env or auth_password_file)"
			if fix, ok := microsoftAuthFix(se, dest.AuthUsername); ok {
				f.Fix = fix
			}
		}
		return f
	}
	return nil
}

// notOffered is the failure for a server that offers none of the
// mechanisms the destination can use.
func (c *Conn) notOffered(what, fix string) *policy.Failure {
	_, offered := c.Extension("AUTH")
	if offered == "" {
		offered = "no AUTH at all"
	}
	return &policy.Failure{Class: policy.Auth, Host: c.Dest.Upstream,
		Detail: fmt.Sprintf("the server offers neither %s after TLS (it offers: %s)", what, offered), Fix: fix}
}

// oauthMechanism picks XOAUTH2 or OAUTHBEARER: the one asked for, or with
// auto the first of the two that EHLO offered.
func (c *Conn) oauthMechanism() (policy.Mechanism, error) {
	switch want := c.Dest.AuthMechanism; want {
	case policy.MechXOAuth2, policy.MechOAuthBearer:
		if !c.offersAuth(strings.ToUpper(string(want))) {
			_, offered := c.Extension("AUTH")
			return "", &policy.Failure{Class: policy.Auth, Host: c.Dest.Upstream,
				Detail: fmt.Sprintf("auth_mechanism is %s but the server does not offer it after TLS (it offers: %q)", want, offered),
				Fix:    `set auth_mechanism = "auto" to use what the server offers`}
		}
		return want, nil
	}
	switch {
	case c.offersAuth("XOAUTH2"):
		return policy.MechXOAuth2, nil
	case c.offersAuth("OAUTHBEARER"):
		return policy.MechOAuthBearer, nil
	}
	return "", c.notOffered("AUTH XOAUTH2 nor AUTH OAUTHBEARER", "this server does not take OAuth tokens; check upstream (Microsoft 365: smtp.office365.com:587, Gmail: smtp.gmail.com:587)")
}

// authOAuth logs in with a token. A token the upstream refuses is dropped
// from the cache; if it came from the cache, a new one is fetched and
// tried once more on the same connection before the attempt fails.
func (c *Conn) authOAuth(ctx context.Context, tokens *oauth.Registry) error {
	dest := c.Dest
	if tokens == nil {
		return &policy.Failure{Class: policy.OAuthToken, Host: dest.Upstream,
			Detail: "no token source is configured for this dialer", Fix: "this is a bug in tlsrelay; please report it"}
	}
	src := tokens.Source(dest)
	mechName, err := c.oauthMechanism()
	if err != nil {
		return err
	}
	for try := 0; ; try++ {
		tok, err := src.Token(ctx)
		if err != nil {
			var oe *oauth.Error
			if errors.As(err, &oe) {
				return oe.Failure(dest.Upstream)
			}
			return &policy.Failure{Class: policy.OAuthToken, Host: dest.Upstream, Err: err,
				Detail: "no access token: " + err.Error(), Fix: "the relay will retry"}
		}
		var refused func() *oauthError
		var mech saslClient
		if mechName == policy.MechXOAuth2 {
			m := &xoauth2Client{user: dest.OAuth.Mailbox, token: tok.Value.Reveal()}
			mech, refused = m, func() *oauthError { return m.refused }
		} else {
			host, portStr, _ := net.SplitHostPort(dest.Upstream)
			port, _ := strconv.Atoi(portStr)
			m := &oauthBearerClient{user: dest.OAuth.Mailbox, host: host, port: port, token: tok.Value.Reveal()}
			mech, refused = m, func() *oauthError { return m.refused }
		}
		c.raw.SetDeadline(time.Now().Add(commandTimeout))
		err = c.authenticate(mech)
		if err == nil {
			return nil
		}
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code/100 != 5 {
			return smtpFailure(dest, "AUTH "+strings.ToUpper(string(mechName)), err)
		}
		src.Invalidate(tok.Value)
		if !tok.Fresh && try == 0 {
			continue // a cached token may have been revoked: one more with a new one
		}
		return oauthRefusal(dest, mechName, se, refused(), tok)
	}
}

// oauthRefusal explains an upstream's refusal of a valid token. Replies
// that are known (Microsoft's) get their exact fix; any other is shown as
// it came, with no guess.
func oauthRefusal(dest *policy.Destination, mech policy.Mechanism, se *smtp.SMTPError, challenge *oauthError, tok oauth.Token) *policy.Failure {
	o := dest.OAuth
	detail := fmt.Sprintf("%s login of %s (%s token) refused: %d %s",
		strings.ToUpper(string(mech)), o.Mailbox, o.Flow, se.Code, replyText(se))
	if challenge != nil {
		detail += " (its error challenge: " + challenge.String() + ")"
	}
	f := &policy.Failure{Class: policy.Auth, Host: dest.Upstream, Err: se, Detail: detail,
		Fix: "the upstream's reply says why it refused the token of " + o.Mailbox}
	if fix, ok := microsoftAuthFix(se, o.Mailbox); ok {
		f.Fix = fix
	} else if enh(se) == "5.7.3" && tok.Fresh && o.Flow == policy.ClientCredentials {
		f.Fix = "a new app-only token was refused, so the app-only setup is incomplete: grant the app SMTP.SendAsApp (Office 365 Exchange Online, application, admin consent); " +
			"New-ServicePrincipal -AppId <client_id> -ObjectId <enterprise app object id>; Add-MailboxPermission -Identity " + o.Mailbox + " -User <service principal id> -AccessRights FullAccess"
	} else if challenge != nil && challenge.Scope != "" && tok.Fresh {
		f.Fix = fmt.Sprintf("the server refused a newly issued token for %s and names the scope %s: check that the token is issued for that scope and for this mailbox", o.Mailbox, challenge.Scope)
	}
	return f
}

// microsoftAuthFix knows Exchange Online's reply for SMTP AUTH disabled
// for the tenant or the mailbox (5.7.139).
func microsoftAuthFix(se *smtp.SMTPError, mailbox string) (string, bool) {
	if enh(se) != "5.7.139" && !strings.Contains(se.Message, "SmtpClientAuthentication is disabled") {
		return "", false
	}
	if strings.Contains(se.Message, "Tenant") {
		return "SMTP AUTH is disabled for the whole tenant: run Set-TransportConfig -SmtpClientAuthenticationDisabled $false in Exchange Online PowerShell, " +
			"or enable it for this mailbox only: Set-CASMailbox -Identity " + mailbox + " -SmtpClientAuthenticationDisabled $false", true
	}
	return "SMTP AUTH is disabled for the mailbox: run Set-CASMailbox -Identity " + mailbox + " -SmtpClientAuthenticationDisabled $false in Exchange Online PowerShell", true
}

// refineSenderRefusal names the fix for a refusal of the envelope sender
// by an upstream the destination is logged in to: Exchange Online's
// SendAsDenied (5.2.252, 5.7.60). It changes f only for those replies.
func refineSenderRefusal(dest *policy.Destination, f *policy.Failure, se *smtp.SMTPError) {
	if !dest.LogsIn() {
		return
	}
	if e := enh(se); e != "5.2.252" && e != "5.7.60" && !strings.Contains(se.Message, "SendAsDenied") {
		return
	}
	mailbox := dest.AuthUsername
	if dest.OAuth != nil {
		mailbox = dest.OAuth.Mailbox
	}
	f.Class = policy.Auth
	f.Fix = mailbox + " may only send as itself or as addresses it has SendAs rights on: have the application send as " + mailbox +
		", or grant the right (Exchange Online: Add-RecipientPermission -Identity <sender> -Trustee " + mailbox + " -AccessRights SendAs)"
}

// enh is a reply's enhanced status code as text, "" when it has none.
func enh(se *smtp.SMTPError) string {
	if se.EnhancedCode == smtp.NoEnhancedCode || se.EnhancedCode == smtp.EnhancedCodeNotSet {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
}

// ProbeAuth is `tlsrelay check -auth`: it connects as delivery would,
// verifies TLS, obtains a token (OAuth) and logs in, then says QUIT. It
// never sends MAIL. The result is nil when the login succeeded.
func (d *Dialer) ProbeAuth(ctx context.Context, dest *policy.Destination) *policy.Failure {
	if !dest.LogsIn() {
		return &policy.Failure{Class: policy.Auth, Host: dest.Upstream,
			Detail: "the destination has no login configured", Fix: "set auth_username or a [destination.oauth] table, or check without -auth"}
	}
	conn, err := d.dialTLS(ctx, dest, nil)
	if err != nil {
		return policy.FailureOf(dest.Upstream, err)
	}
	defer conn.Close()
	if err := conn.auth(ctx, d.Tokens); err != nil {
		return policy.FailureOf(dest.Upstream, err)
	}
	return nil
}
