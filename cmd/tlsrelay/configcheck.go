package main

import (
	"fmt"
	"io"

	"github.com/BurntSushi/toml"
)

func cmdConfigCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("config check", stderr)
	cfgPath := fs.String("config", "", "configuration `file` (TOML)")
	if rc := parseFlags(fs, args, 0); rc != 0 {
		return max(rc, 0)
	}
	cfg, path, how, ok := loadConfig(*cfgPath, stderr)
	if !ok {
		return 1
	}
	fmt.Fprintf(stdout, "# %s (%s): OK\n# The effective configuration, defaults filled in:\n\n", path, how)
	if err := toml.NewEncoder(stdout).Encode(cfg.Effective()); err != nil {
		fmt.Fprintln(stderr, "tlsrelay:", err)
		return 1
	}
	return 0
}
