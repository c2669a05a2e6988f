package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/lmittmann/tint"
)

// newLogger builds the process logger: tint's readable colour lines on a
// terminal, JSON lines otherwise (for log collectors), or as configured.
// The returned LevelVar changes the level later (on reload).
func newLogger(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	var l slog.Level
	l.UnmarshalText([]byte(level)) // validated by config; "info" on error
	lv.Set(l)
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "tint"
		}
	}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})), lv
	case "text":
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: lv, NoColor: true, TimeFormat: "2006-01-02T15:04:05.000Z07:00"})), lv
	default:
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: lv, TimeFormat: "15:04:05.000"})), lv
	}
}

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
