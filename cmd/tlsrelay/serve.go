package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"tlsrelay/relay"
	"tlsrelay/relay/config"
)

// tuneGC lets the heap grow to five times the live data between
// collections (Go's default is twice) unless GOGC says otherwise: the
// relay's live heap is small (tens of MiB with a thousand sessions), and
// under load fewer collections measured 20% more messages per second and a
// lower p99 (README, Performance). A soft memory limit (unless GOMEMLIMIT
// says otherwise) makes the collector run more often instead once the
// relay's memory nears memoryLimit: a large queue (about 300 bytes of live
// heap per message) would otherwise take five times that.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
}

// memoryLimit is the relay's soft memory limit (Go's runtime memory:
// heap, stacks and their bookkeeping).
const memoryLimit = 100 << 20

// defaultConfigPaths are tried in order when -config is not given.
var defaultConfigPaths = []string{"./tlsrelay.toml", "/etc/tlsrelay/config.toml"}

// findConfig returns the configuration file to use and a sentence saying
// how it was chosen.
func findConfig(flagValue string) (string, string, error) {
	if flagValue != "" {
		return flagValue, "from -config", nil
	}
	for _, p := range defaultConfigPaths {
		if _, err := os.Stat(p); err == nil {
			return p, "found at a default location (no -config given)", nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("cannot read %s: %w", p, err)
		}
	}
	return "", "", fmt.Errorf("no configuration: -config not given and neither %s nor %s exists; start from config.example.toml, or try `tlsrelay demo`",
		defaultConfigPaths[0], defaultConfigPaths[1])
}

// loadConfig finds and loads the configuration for a command, or says on
// stderr why it cannot.
func loadConfig(flagValue string, stderr io.Writer) (cfg *config.Config, path, how string, ok bool) {
	path, how, err := findConfig(flagValue)
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay:", err)
		return nil, "", "", false
	}
	cfg, err = config.Load(path)
	if err != nil {
		printConfigErrors(stderr, err)
		return nil, "", "", false
	}
	return cfg, path, how, true
}

// printConfigErrors says why a configuration does not load: one mistake
// on the line, several one per line under a count, as a compiler does.
func printConfigErrors(w io.Writer, err error) {
	var es config.Errors
	if !errors.As(err, &es) || len(es) == 1 {
		fmt.Fprintln(w, "tlsrelay: configuration is not valid:", err)
		return
	}
	fmt.Fprintf(w, "tlsrelay: configuration is not valid: %d mistakes:\n%s\n", len(es), es)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage of tlsrelay %s:\n", name)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\n"+usage)
	}
	return fs
}

// parseInterspersed parses flags wherever they stand among the
// arguments ("check host:25 -json" as well as "check -json host:25"); the
// positional arguments are then fs.Args().
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return fs.Parse(append([]string{"--"}, positional...))
}

// parseFlags parses args and refuses stray arguments, returning the exit
// status to use when parsing failed (0 when it did not).
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) int {
	if err := parseInterspersed(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return -1
		}
		return exitUsage
	}
	if fs.NArg() > maxArgs {
		fmt.Fprintf(fs.Output(), "tlsrelay %s: unexpected argument %q\n", fs.Name(), fs.Arg(maxArgs))
		fs.Usage()
		return exitUsage
	}
	return 0
}

func cmdServe(args []string, stderr io.Writer) int {
	fs := newFlagSet("serve", stderr)
	cfgPath := fs.String("config", "", "configuration `file` (TOML)")
	if rc := parseFlags(fs, args, 0); rc != 0 {
		return max(rc, 0)
	}
	// SIGHUP's default action ends the process. A reload asked for while
	// the relay is still starting (a config manager that starts it and
	// then reloads, or a large queue being recovered) must not kill it:
	// from here on the request waits and is carried out once it runs.
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)
	// A log line written to a standard output or error whose reader has
	// gone (a log collector restarted, a pipe closed) would otherwise end
	// the process with SIGPIPE: a relay that stops taking mail because its
	// logs cannot be read. The write fails instead and mail keeps flowing.
	signal.Ignore(syscall.SIGPIPE)
	cfg, path, how, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	log, level := newLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	log.Info("configuration loaded", "file", path, "how", how)
	tuneGC()

	r, err := relay.New(cfg, relay.Options{Logger: log, Level: level})
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	if err := r.Start(); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	stopImport, err := startDropImport(cfg, r, log)
	if err != nil {
		log.Error("cannot start", "error", err)
		r.Shutdown(context.Background())
		return 1
	}
	defer stopImport()
	// Listening, spool recovered, drop import running: ready (systemd Type=notify).
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("cannot notify systemd of readiness", "error", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
wait:
	for {
		select {
		case <-hups:
			log.Info("SIGHUP: reloading the configuration", "file", path)
			r.ReloadFile(path)
		case s := <-sigs:
			log.Info("signal received", "signal", s.String())
			break wait
		case err := <-r.Done():
			log.Error("SMTP server stopped", "error", err)
			ctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.Duration)
			defer cancel()
			r.Shutdown(ctx)
			return 1
		}
	}
	signal.Stop(sigs)
	sdNotify("STOPPING=1")
	stopImport()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.Duration)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		log.Error("shutdown", "error", err)
		return 1
	}
	return 0
}
