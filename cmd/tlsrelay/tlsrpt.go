package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"tlsrelay/relay"
	"tlsrelay/relay/tlsrpt"
)

// cmdTLSRPT lists the TLS-RPT reports kept in the spool directory, or
// prints one: the latest of a domain, or that of a given day.
func cmdTLSRPT(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("tlsrpt", stderr)
	cfgPath := fs.String("config", "", "configuration `file`")
	asJSON := fs.Bool("json", false, "list as JSON")
	if rc := parseFlags(fs, args, 2); rc != 0 {
		return max(rc, 0)
	}
	cfg, _, _, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	dir := relay.TLSRPTDir(cfg.Queue.Dir)
	list, err := tlsrpt.List(dir)
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay tlsrpt:", err)
		return 1
	}
	if fs.NArg() == 0 {
		if *asJSON {
			type entry struct {
				Day        string `json:"day"`
				Domain     string `json:"domain"`
				Successful int64  `json:"successful_sessions"`
				Failed     int64  `json:"failed_sessions"`
				Path       string `json:"path"`
				// Sent is the send ledger, absent when nothing was sent.
				Sent *tlsrpt.Ledger `json:"sent,omitempty"`
				// Error says why the report or its ledger could not be read.
				Error string `json:"error,omitempty"`
			}
			out := []entry{}
			for _, e := range list {
				var msg string
				if e.Err != nil {
					msg = e.Err.Error()
				}
				out = append(out, entry{e.Day, e.Domain, e.Successful, e.Failed, e.Path, e.Sent, msg})
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(out)
			return 0
		}
		if len(list) == 0 {
			fmt.Fprintf(stdout, "no TLS-RPT reports in %s (they are written by delivery to mail exchangers, upstream = \"mx\")\n", dir)
			return 0
		}
		fmt.Fprintf(stdout, "%-10s  %-30s  %10s  %8s  %s\n", "DAY (UTC)", "POLICY DOMAIN", "SUCCESSFUL", "FAILED", "SENT TO RUA")
		for _, e := range list {
			sent := "-"
			switch {
			case e.Err != nil:
				sent = "unreadable: " + e.Err.Error()
			case e.Sent != nil:
				sent = e.Sent.Summary()
			}
			fmt.Fprintf(stdout, "%-10s  %-30s  %10d  %8d  %s\n", e.Day, e.Domain, e.Successful, e.Failed, sent)
		}
		return 0
	}
	domain := strings.ToLower(fs.Arg(0))
	day := fs.Arg(1)
	var found *tlsrpt.Entry
	for i := range list {
		if list[i].Domain == domain && (day == "" || list[i].Day == day) {
			found = &list[i] // the list is oldest first: the last match is the latest
		}
	}
	if found == nil {
		fmt.Fprintf(stderr, "tlsrelay tlsrpt: no report for %s%s in %s\n", domain, map[bool]string{true: " on " + day}[day != ""], dir)
		return 1
	}
	raw, err := os.ReadFile(found.Path)
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay tlsrpt:", err)
		return 1
	}
	stdout.Write(raw)
	return 0
}
