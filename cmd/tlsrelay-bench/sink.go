package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"

	"tlsrelay/policy/certgen"
	"tlsrelay/relay/sink"
)

// benchSink is a discarding upstream with its own throwaway CA.
type benchSink struct {
	*sink.Sink
	caFile string
	stats  string // host:port of the count endpoint
}

func startBenchSink(listen, name, caFile string, implicit bool, statsAddr string) (*benchSink, error) {
	ca, err := certgen.NewCA("tlsrelay-bench CA")
	if err != nil {
		return nil, err
	}
	// localhost too: maddy verifies the name it dials, localhost.
	leaf, err := ca.Issue(certgen.Options{CommonName: name, DNSNames: []string{name, "localhost"}})
	if err != nil {
		return nil, err
	}
	if err := certgen.WriteCertFile(caFile, ca.Cert); err != nil {
		return nil, err
	}
	s, err := sink.Start(sink.Options{Addr: listen, Hostname: name, Cert: leaf.TLSCertificate(), Implicit: implicit, Discard: true})
	if err != nil {
		return nil, err
	}
	b := &benchSink{Sink: s, caFile: caFile}
	if statsAddr != "" {
		ln, err := net.Listen("tcp", statsAddr)
		if err != nil {
			return nil, err
		}
		b.stats = ln.Addr().String()
		mux := http.NewServeMux()
		mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, s.Count()) })
		go http.Serve(ln, mux)
	}
	return b, nil
}

func cmdSink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:10587", "address to listen on")
	implicit := fs.Bool("implicit", false, "implicit TLS instead of STARTTLS")
	caOut := fs.String("ca-out", "bench-ca.pem", "where to write the CA certificate (the relay's ca_file)")
	name := fs.String("name", "mx.bench.test", "the certificate's host name (the relay's require_hostname)")
	stats := fs.String("stats", "127.0.0.1:10588", "address of the HTTP count endpoint")
	fs.Parse(args)
	if err := loopbackOnly(*listen, *stats); err != nil {
		return err
	}
	s, err := startBenchSink(*listen, *name, *caOut, *implicit, *stats)
	if err != nil {
		return err
	}
	fmt.Printf("sink on %s (%s), CA in %s, count at http://%s/count; Ctrl-C to stop\n", s.Addr(), *name, *caOut, s.stats)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt)
	<-sigs
	fmt.Printf("received %d messages\n", s.Count())
	return nil
}

// loopbackOnly refuses addresses off this machine: the benchmark must
// never send load anywhere else.
func loopbackOnly(addrs ...string) error {
	for _, a := range addrs {
		if a == "" {
			continue
		}
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return err
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("%s is not a loopback address; tlsrelay-bench only runs on loopback", a)
		}
	}
	return nil
}
