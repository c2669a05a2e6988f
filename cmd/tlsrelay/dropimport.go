package main

import (
	"context"
	"log/slog"
	"time"

	"tlsrelay/relay"
	"tlsrelay/relay/config"
	"tlsrelay/relay/drop"
)

// startDropImport prepares the drop directory and starts importing from
// it through the running relay's front door; stop ends the import. A
// drop directory named in the file that cannot be used is an error; the
// derived default only turns the import off, with a warning.
func startDropImport(cfg *config.Config, r *relay.Relay, log *slog.Logger) (stop func(), err error) {
	dir, explicit := cfg.ResolvedDropDir()
	if dir == "" {
		log.Info("drop directory off ([sendmail] drop = false): sendmail exits 75 when the relay cannot take a message")
		return func() {}, nil
	}
	if err := drop.PrepareDir(dir); err != nil {
		if explicit {
			return nil, err
		}
		log.Warn("drop directory cannot be used, so sendmail cannot keep messages while the relay is down; create it (mode 3733, owned by the relay's user and group) or set [sendmail] drop_dir", "error", err)
		return func() {}, nil
	}
	im := &drop.Importer{
		Dir:      dir,
		Addr:     drop.DialAddr(r.Addr().String()),
		MaxAge:   cfg.Queue.MaxAge.Duration,
		Interval: time.Second,
		Log:      log,
		// The relay itself says what it already took, each time the
		// importer is about to submit a file again.
		Queued: r.DropTaken,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		im.Run(ctx)
	}()
	log.Info("importing from the drop directory", "dir", dir)
	return func() { cancel(); <-done }, nil
}
