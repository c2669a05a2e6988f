package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"tlsrelay/relay"
	"tlsrelay/relay/spool"
)

// listQueue writes `queue list`: mailq's view (see writeQueueEntry), or
// with asJSON an indented JSON array of relay.QueueEntry. Both are written
// as the spool is read, one message at a time, so a queue of any length
// is listed in little memory.
func listQueue(w io.Writer, store *spool.Store, now time.Time, asJSON bool) error {
	return writeQueueList(w, func(fn func(relay.QueueEntry) error) error { return relay.WalkQueue(store, now, fn) }, now, asJSON)
}

// writeQueueList writes the listing of the messages walk yields, as they
// come, through one buffer: the output is written in large pieces, and
// the walk stops when it cannot be written (stdout gone).
func writeQueueList(w io.Writer, walk func(func(relay.QueueEntry) error) error, now time.Time, asJSON bool) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var messages, pending int
	var bytes int64
	err := walk(func(e relay.QueueEntry) error {
		if asJSON {
			b, err := json.MarshalIndent(e, "  ", "  ")
			if err != nil {
				return err
			}
			bw.WriteString(map[bool]string{true: "[\n  ", false: ",\n  "}[messages == 0])
			bw.Write(b)
		} else {
			if messages > 0 {
				bw.WriteByte('\n')
			}
			writeQueueEntry(bw, e, now)
		}
		messages++
		pending += len(e.Pending)
		bytes += e.Size
		if bw.Buffered() >= 48<<10 {
			return bw.Flush() // stops the walk when stdout is gone
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case asJSON && messages == 0:
		bw.WriteString("[]\n")
	case asJSON:
		bw.WriteString("\n]\n")
	case messages == 0:
		bw.WriteString("The queue is empty.\n")
	default:
		fmt.Fprintf(bw, "\n-- %d KiB in %d %s, %d %s pending.\n", (bytes+1023)/1024,
			messages, plural(messages, "message", "messages"), pending, plural(pending, "recipient", "recipients"))
	}
	return bw.Flush()
}

// writeQueueEntry writes one message as mailq does: a line with the queue
// id, size, arrival, sender and state, then one indented line per pending
// recipient with its latest failure in short; delivered and bounced
// recipients are only counted.
//
//	18f2c3d4e5fkq2x7vtbn4mzc  1234 bytes  2026-11-29T16:00:05Z (5m ago)  from <app@example.com>  retry in 28s (3 attempts)
//	    bob@example.net  connect: cannot connect to mx.example.net:25: connection refused
//	    + 1 delivered
func writeQueueEntry(w *bufio.Writer, e relay.QueueEntry, now time.Time) {
	from := "<" + e.From + ">"
	if e.Bounce {
		from += " (a bounce)"
	}
	fmt.Fprintf(w, "%s  %d bytes  %s (%s ago)  from %s  %s\n", e.ID, e.Size, e.Received.UTC().Format(time.RFC3339),
		time.Duration(e.AgeSeconds*int64(time.Second)).String(), printable(from, 0), queueState(e, now))
	var delivered, bounced int
	for _, rc := range e.Recipients {
		switch rc.Status {
		case spool.StatusDelivered:
			delivered++
			continue
		case spool.StatusFailed:
			bounced++
			continue
		}
		why := "(not attempted yet)"
		if rc.LastClass != "" {
			why = rc.LastClass + ": " + printable(rc.LastFailure, maxFailureRunes)
		}
		fmt.Fprintf(w, "    %s  %s\n", printable(rc.Addr, 0), why)
	}
	if delivered+bounced > 0 {
		var parts []string
		if delivered > 0 {
			parts = append(parts, fmt.Sprintf("%d delivered", delivered))
		}
		if bounced > 0 {
			parts = append(parts, fmt.Sprintf("%d bounced", bounced))
		}
		fmt.Fprintf(w, "    + %s\n", strings.Join(parts, ", "))
	}
}

// maxFailureRunes clips a failure's detail in the list; `queue show`
// has it whole.
const maxFailureRunes = 100

// queueState says in words when the message is attempted next.
func queueState(e relay.QueueEntry, now time.Time) string {
	attempts := fmt.Sprintf("%d %s", e.Attempts, plural(e.Attempts, "attempt", "attempts"))
	switch {
	case e.Held:
		return "held (" + attempts + "; release it to deliver)"
	case e.WaitingFor != "":
		return "waiting for " + printable(e.WaitingFor, 0) + ", which is down: not tried until its probe succeeds (" + attempts + ")"
	case e.Attempts == 0:
		return "new (not attempted yet)"
	case e.NextAttempt.After(now):
		in := (e.NextAttempt.Sub(now) + time.Second - 1).Truncate(time.Second) // never "in 0s"
		return "retry in " + in.String() + " (" + attempts + ")"
	default:
		return "due now (" + attempts + ")"
	}
}

// printable makes text from the network safe for a terminal: every
// control character or run of white space becomes one space, and with
// max > 0 it is clipped to max runes, ending in "…".
func printable(s string, max int) string {
	var b strings.Builder
	n, space := 0, false
	for _, r := range strings.TrimSpace(s) {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			space = true
			continue
		}
		if space {
			b.WriteByte(' ')
			n++
			space = false
		}
		if max > 0 && n >= max {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
