package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"tlsrelay/relay/users"
)

// cmdPasswd prints an auth_users_file line for a user. The password is
// read from the terminal without echo (asked twice), or as the first line
// of standard input when that is not a terminal (for scripts).
func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("passwd", stderr)
	senders := fs.String("senders", "", "comma-separated envelope senders the user may use, e.g. \"app@example.com,*@billing.example.com\" (default: any)")
	if rc := parseFlags(fs, args, 1); rc != 0 {
		return max(rc, 0)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "tlsrelay passwd: give the user name")
		fs.Usage()
		return exitUsage
	}
	name := fs.Arg(0)
	password, err := readPassword(stdin, stderr, name)
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay passwd:", err)
		return 1
	}
	var patterns []string
	for _, p := range strings.Split(*senders, ",") {
		if p = strings.TrimSpace(p); p != "" {
			patterns = append(patterns, p)
		}
	}
	line, err := users.HashLine(name, password, patterns)
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay passwd:", err)
		return 1
	}
	if _, err := users.ParseLine(line); err != nil {
		fmt.Fprintln(stderr, "tlsrelay passwd:", err)
		return 1
	}
	fmt.Fprintln(stdout, line)
	return 0
}

func readPassword(stdin io.Reader, stderr io.Writer, name string) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(stderr, "Password for %s: ", name)
		p1, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		p2, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(p1) != string(p2) {
			return "", fmt.Errorf("the two passwords differ")
		}
		return string(p1), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("no password on standard input")
	}
	return strings.TrimRight(line, "\r\n"), nil
}
