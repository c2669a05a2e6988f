// Command tlsrelay is an SMTP submission relay that accepts plain SMTP
// from local applications and forwards each message only over TLS that
// was verified under a per-destination policy.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

const usage = `tlsrelay: a local SMTP relay that only ever sends mail upstream over verified TLS

Usage:
  tlsrelay serve [-config FILE]     run the relay
  tlsrelay demo [-listen ADDR]      run the whole path on this machine, nothing external needed
  tlsrelay check -config FILE [-auth] DOMAIN
                                    probe the upstream of DOMAIN with its policy (-auth: log in too); never sends mail
  tlsrelay check [-starttls|-implicit] [-ca-file F] [-min-tls 1.2] [-hostname H] HOST:PORT
  tlsrelay route [-config FILE] [-json] SENDER RECIPIENT...
                                    which destination each recipient goes to, and why; sends nothing
  tlsrelay config check [-config FILE]
                                    validate a configuration and print it with defaults filled in
  tlsrelay queue [-config FILE] list|show|retry|hold|release|delete|bounce [ID|-all]
                                    inspect and change the queue, while the relay runs or not
  tlsrelay oauth login -config FILE DESTINATION
                                    obtain the first refresh token of a refresh_token destination
  tlsrelay oauth status -config FILE
                                    flow, mailbox, token expiry, last refresh and last error per OAuth destination
  tlsrelay tlsrpt [-config FILE] [-json] [DOMAIN [DAY]]
                                    list the daily TLS-RPT reports of delivery to mail exchangers, or print one
  tlsrelay passwd [-senders P,...] USER
                                    print an auth_users_file line (password from the terminal or stdin)
  tlsrelay sendmail [-t] [-i] [-f SENDER] [-F NAME] [--] [RECIPIENT...]
                                    the sendmail command for local programs (also as "sendmail";
                                    "mailq" is "queue list")
  tlsrelay version                  print the version

Without -config, serve and config check use ./tlsrelay.toml, then /etc/tlsrelay/config.toml.
Flags may be written with - or --. Documentation: README.md.
`

// exitUsage is the exit status for a wrong command line.
const exitUsage = 2

func main() {
	args := os.Args[1:]
	// Installed as /usr/sbin/sendmail and /usr/bin/mailq (symbolic links),
	// tlsrelay behaves as those commands.
	switch filepath.Base(os.Args[0]) {
	case "sendmail":
		args = append([]string{"sendmail"}, args...)
	case "mailq":
		args = append([]string{"queue", "list"}, args...)
	}
	os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stderr)
	case "queue":
		return cmdQueue(args[1:], stdout, stderr)
	case "passwd":
		return cmdPasswd(args[1:], stdin, stdout, stderr)
	case "oauth":
		return cmdOAuth(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "tlsrpt":
		return cmdTLSRPT(args[1:], stdout, stderr)
	case "route":
		return cmdRoute(args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "sendmail":
		return cmdSendmail(args[1:], stdin, stdout, stderr)
	case "config":
		if len(args) < 2 || args[1] != "check" {
			fmt.Fprint(stderr, "tlsrelay config: the only subcommand is \"check\"\n\n"+usage)
			return exitUsage
		}
		return cmdConfigCheck(args[2:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "tlsrelay: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}
