package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"tlsrelay/relay/config"
	"tlsrelay/relay/drop"
	"tlsrelay/relay/sendmail"
)

// Exit statuses of `sendmail`, from sysexits.h, as programs that run
// sendmail expect them.
const (
	exOK          = 0
	exUsage       = 64 // a command line sendmail does not accept
	exDataErr     = 65 // no recipient, unreadable address fields, the message refused
	exNoUser      = 67 // a recipient refused
	exUnavailable = 69 // the relay refuses this client or sender for good
	exTempFail    = 75 // neither the relay nor the drop directory took it: try again
	exConfig      = 78 // no usable configuration
)

const sendmailUsage = `Usage: sendmail [-t] [-i] [-f sender] [-F name] [-B 8BITMIME] [-C config] [-v] [--] [recipient ...]
       sendmail -bs [-C config]
Also accepted: -r (as -f), -oi (as -i), -bm (the default), -U, and with no
effect -oem -oee -oep -oeq -oew -odb -odi -om. -C names a tlsrelay
configuration file; else TLSRELAY_CONFIG, else ./tlsrelay.toml, then
/etc/tlsrelay/config.toml. README.md, "For applications that run sendmail".
`

// cmdSendmail is `tlsrelay sendmail`, and tlsrelay run under the name
// sendmail.
func cmdSendmail(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	opts, err := sendmail.ParseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "sendmail: %v\n\n%s", err, sendmailUsage)
		return exUsage
	}
	path := opts.ConfigFile
	if path == "" {
		path = os.Getenv("TLSRELAY_CONFIG")
	}
	path, _, err = findConfig(path)
	if err != nil {
		fmt.Fprintln(stderr, "sendmail:", err)
		return exConfig
	}
	view, err := config.LoadSendmailView(path)
	if err != nil {
		fmt.Fprintf(stderr, "sendmail: the configuration %s cannot be read: %v\n", path, err)
		return exConfig
	}
	r := &sendmail.Relay{Addr: drop.DialAddr(view.Listen), Helo: view.Hostname, DropDir: view.DropDir}
	if opts.Mode == sendmail.ModeSMTP {
		if err := r.ServeSMTP(stdin, stdout, view.Hostname, view.MaxMessageBytes); err != nil {
			fmt.Fprintln(stderr, "sendmail:", err)
			return exTempFail
		}
		return exOK
	}
	msg, err := sendmail.Prepare(opts, stdin, sendmail.Local{
		User: invokingUser(), Hostname: view.Hostname, MaxBytes: view.MaxMessageBytes, Now: time.Now(),
	})
	if err != nil {
		fmt.Fprintln(stderr, "sendmail:", err)
		var de *sendmail.DataError
		if errors.As(err, &de) {
			return exDataErr
		}
		return exTempFail // reading standard input failed
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out, err := r.Deliver(ctx, msg)
	return sendmailStatus(out, err, opts.Verbose, stderr)
}

// sendmailStatus reports the outcome on stderr and returns the exit status.
func sendmailStatus(out sendmail.Outcome, err error, verbose bool, stderr io.Writer) int {
	if verbose {
		for _, r := range out.Replies {
			fmt.Fprintln(stderr, "sendmail: relay:", r)
		}
	}
	var refused *drop.RecipientsRefusedError
	var rejected *drop.RejectedError
	var temp *sendmail.TempError
	switch {
	case err == nil && out.Dropped != "":
		if verbose {
			fmt.Fprintf(stderr, "sendmail: %v; the message is kept in %s and the relay will take it as soon as it can\n", out.Why, out.Dropped)
		}
		return exOK
	case err == nil:
		return exOK
	case errors.As(err, &refused):
		for _, rf := range refused.Refused {
			fmt.Fprintf(stderr, "sendmail: recipient <%s> refused by the relay: %d %s\n", rf.Recipient, rf.Reply.Code, strings.TrimSpace(replyLine(rf.Reply.EnhancedCode, rf.Reply.Message)))
		}
		fmt.Fprintln(stderr, "sendmail: the message was not sent to any recipient")
		return exNoUser
	case errors.As(err, &rejected):
		fmt.Fprintln(stderr, "sendmail:", err)
		if rejected.Stage == "greeting" || rejected.Stage == "MAIL FROM" {
			return exUnavailable
		}
		return exDataErr
	case errors.As(err, &temp):
		fmt.Fprintln(stderr, "sendmail:", err)
		return exTempFail
	default:
		fmt.Fprintln(stderr, "sendmail:", err)
		return exTempFail
	}
}

func replyLine(code [3]int, msg string) string {
	if code[0] > 0 {
		return fmt.Sprintf("%d.%d.%d %s", code[0], code[1], code[2], msg)
	}
	return msg
}

// invokingUser is the login name of the real user id (not of $USER, which
// the caller can set to anything); a uid without a name is "uid<N>".
func invokingUser() string {
	uid := strconv.Itoa(os.Getuid())
	if u, err := user.LookupId(uid); err == nil && u.Username != "" {
		return u.Username
	}
	return "uid" + uid
}
