// Command tlsrelay-bench measures tlsrelay: a load generator and an
// upstream TLS sink in one tool, both Go, on loopback only, and a
// side-by-side comparison of the sink alone (the limit), tlsrelay in front
// of it, and Postfix and maddy in front of it.
package main

import (
	"fmt"
	"os"
)

const usage = `tlsrelay-bench: load tests for tlsrelay (loopback only)

  tlsrelay-bench sink    -listen ADDR [-implicit] [-ca-out FILE] [-name NAME] [-stats ADDR]
        an upstream that speaks STARTTLS (or implicit TLS) with a certificate it
        generates, writes its CA to FILE for a relay's ca_file, and counts and
        discards what it receives (GET http://STATS/count)
  tlsrelay-bench load    -to ADDR [-sessions N] [-messages M] [-size BYTES] [-new-conn]
                         [-sink-stats URL] [-json]
        N concurrent SMTP sessions send M messages of BYTES each (a session
        reuses its connection unless -new-conn); reports messages/s, MB/s,
        submit latency p50/p90/p99 (end of DATA to the 250) and, with
        -sink-stats, how many the sink confirmed and the end-to-end rate
  tlsrelay-bench compare -relay PATH [-postfix SCRIPT] [-maddy SCRIPT] [-rounds N]
                         [-cases TEXT] [-quick] [-markdown FILE]
        the whole comparison in one run: every case against the sink alone,
        tlsrelay (PATH is a built tlsrelay binary) and, for each SCRIPT given
        that works, a throwaway Postfix and a throwaway maddy; prints the
        rates, each system's CPU per message (all its processes) and ratios;
        -rounds keeps the fastest of N rounds, -cases runs only the cases
        whose name contains TEXT
  tlsrelay-bench backlog -relay PATH [-sizes 10000,50000,200000] [-retry 1s/2s] [-markdown FILE]
        a long outage at each size: intake while the upstream is down (connection
        attempts to it counted), the relay's RSS and spool, queue list, a restart
        with everything queued (until the 220 greeting, until /readyz), then the
        upstream comes back and the drain rate; a table with the growth
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "sink":
		err = cmdSink(os.Args[2:])
	case "load":
		err = cmdLoad(os.Args[2:])
	case "compare":
		err = cmdCompare(os.Args[2:])
	case "backlog":
		err = cmdBacklog(os.Args[2:])
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlsrelay-bench:", err)
		os.Exit(1)
	}
}
