package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"tlsrelay/relay"
	"tlsrelay/relay/config"
	"tlsrelay/relay/spool"
)

const queueUsage = `Usage:
  tlsrelay queue [-config FILE] list [-json]        each message: sender, state, every pending
                                                    recipient with its last failure
  tlsrelay queue [-config FILE] show [-body] [-json] ID
                                                    envelope, recipients, attempts, headers
  tlsrelay queue [-config FILE] retry ID|-all       attempt now
  tlsrelay queue [-config FILE] hold ID             never attempt until released
  tlsrelay queue [-config FILE] release ID          attempt again (now)
  tlsrelay queue [-config FILE] delete ID           remove, without a bounce
  tlsrelay queue [-config FILE] bounce ID           give up now: DSN to the sender

Changes go to the running relay over its control socket (it waits for a
delivery in flight to finish first); with no relay running they are made in
the spool directly.
`

func cmdQueue(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("queue", stderr)
	fs.Usage = func() { fmt.Fprint(stderr, queueUsage) }
	cfgPath := fs.String("config", "", "configuration `file` (TOML)")
	asJSON := fs.Bool("json", false, "print JSON")
	withBody := fs.Bool("body", false, "show: include the message body")
	all := fs.Bool("all", false, "retry: every message")
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	op, rest := fs.Arg(0), fs.Args()[1:]
	cfg, _, _, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return exitUsage
	}
	if op == "list" {
		// A running relay lists its queue itself, streamed over its control
		// socket: this command then holds one message at a time and never
		// reads the spool.
		now := time.Now()
		err := writeQueueList(stdout, func(fn func(relay.QueueEntry) error) error {
			return relay.StreamQueue(cfg.Queue.Dir, fn)
		}, now, *asJSON)
		if errors.Is(err, relay.ErrNoRelay) {
			var store *spool.Store
			if store, err = spool.Open(cfg.Queue.Dir); err == nil {
				err = listQueue(stdout, store, now, *asJSON)
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "tlsrelay queue:", err)
			return 1
		}
		return 0
	}
	store, err := spool.Open(cfg.Queue.Dir)
	if err != nil {
		fmt.Fprintln(stderr, "tlsrelay queue:", err)
		return 1
	}

	switch op {
	case "show":
		if len(rest) != 1 {
			fmt.Fprintln(stderr, "tlsrelay queue show: give one queue id")
			return exitUsage
		}
		v, err := relay.ShowMessage(store, rest[0], *withBody)
		if err != nil {
			fmt.Fprintln(stderr, "tlsrelay queue show:", err)
			return 1
		}
		if *asJSON {
			return printJSON(stdout, v)
		}
		printMessage(stdout, v)
		return 0
	case relay.OpRetry, relay.OpHold, relay.OpRelease, relay.OpDelete, relay.OpBounce:
		req := relay.ControlRequest{Op: op}
		switch {
		case op == relay.OpRetry && *all && len(rest) == 0:
		case len(rest) == 1 && !*all:
			req.ID = rest[0]
		default:
			fmt.Fprintf(stderr, "tlsrelay queue %s: give one queue id%s\n", op, map[bool]string{true: " or -all", false: ""}[op == relay.OpRetry])
			return exitUsage
		}
		resp, err := control(cfg, store, req, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "tlsrelay queue:", err)
			return 1
		}
		for _, id := range resp.Done {
			fmt.Fprintf(stdout, "%s: %s\n", id, op)
		}
		if resp.Error != "" {
			fmt.Fprintln(stderr, "tlsrelay queue:", resp.Error)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "tlsrelay queue: unknown operation %q\n\n%s", op, queueUsage)
		return exitUsage
	}
}

// control performs req through the running relay, or offline when none
// runs on this spool.
func control(cfg *config.Config, store *spool.Store, req relay.ControlRequest, stderr io.Writer) (relay.ControlResponse, error) {
	resp, err := relay.SendControl(store.Dir(), req, cfg.Queue.DeliveryTimeout.Duration+time.Minute)
	if !errors.Is(err, relay.ErrNoRelay) {
		return resp, err
	}
	r, err := relay.New(cfg, relay.Options{Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return resp, err
	}
	release, err := r.Offline()
	if errors.Is(err, spool.ErrLocked) {
		return resp, fmt.Errorf("a relay holds the spool but its control socket %s does not answer", relay.ControlSocket(store.Dir()))
	}
	if err != nil {
		return resp, err
	}
	defer release()
	return r.Control(req), nil
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}

func printMessage(w io.Writer, v *relay.MessageView) {
	env, st := v.Envelope, v.State
	from := env.From
	if from == "" {
		from = "<> (a bounce)"
	}
	fmt.Fprintf(w, "id:        %s\nreceived:  %s from %s (helo %s)\nsender:    %s\nsize:      %d bytes\nattempts:  %d\n",
		env.ID, env.Received.Format(time.RFC3339), dash(env.Client), dash(env.Helo), from, env.Size, st.Attempts)
	if st.Held {
		fmt.Fprintln(w, "held:      yes (release it to deliver)")
	} else if !st.NextAttempt.IsZero() {
		fmt.Fprintf(w, "next:      %s\n", st.NextAttempt.Format(time.RFC3339))
	}
	fmt.Fprintln(w, "recipients:")
	for _, rc := range st.Recipients {
		fmt.Fprintf(w, "  %-9s %s", rc.Status, rc.Addr)
		if rc.Destination != "" {
			fmt.Fprintf(w, "  (destination %s)", rc.Destination)
		}
		fmt.Fprintln(w)
		if rc.Class != "" {
			fmt.Fprintf(w, "            %s: %s\n", rc.Class, rc.Reason)
			if rc.Fix != "" {
				fmt.Fprintf(w, "            fix: %s\n", rc.Fix)
			}
		}
	}
	if len(st.History) > 0 {
		fmt.Fprintln(w, "attempts:")
		for _, a := range st.History {
			fmt.Fprintf(w, "  %s  %s via %s: %s", a.At.Format(time.RFC3339), a.Destination, a.Upstream, a.Result)
			if a.Detail != "" {
				fmt.Fprintf(w, " (%s)", a.Detail)
			}
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "headers:\n%s", indent(v.Headers))
	if v.Body != "" {
		fmt.Fprintf(w, "message:\n%s", indent(v.Body))
	}
}

func indent(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "  " + strings.Join(lines, "\n  ") + "\n"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
