package config

import (
	"os"
	"path/filepath"

	"github.com/BurntSushi/toml"
)

// Sendmail is the [sendmail] table: the `sendmail` entry for local
// programs and the drop directory that keeps their mail while the relay
// is down.
type Sendmail struct {
	// Drop turns the drop directory on: `sendmail` writes a message there
	// when the relay cannot be reached, and the relay imports it through
	// its own front door.
	Drop bool `toml:"drop"`
	// DropDir is the drop directory; empty means the spool directory's
	// name with "-drop" appended (/var/spool/tlsrelay-drop by default).
	DropDir string `toml:"drop_dir"`
}

// DefaultSendmail returns the [sendmail] table's defaults.
func DefaultSendmail() Sendmail { return Sendmail{Drop: true} }

// ResolvedDropDir returns the drop directory in force ("" when the drop is
// off) and whether the file named it explicitly (then a directory the relay
// cannot use stops it from starting; a derived one that cannot be created
// only turns the import off, with a warning).
func (c *Config) ResolvedDropDir() (dir string, explicit bool) {
	if !c.Sendmail.Drop {
		return "", false
	}
	if c.Sendmail.DropDir != "" {
		return c.Sendmail.DropDir, true
	}
	return filepath.Clean(c.Queue.Dir) + "-drop", false
}

// checkSendmail checks the [sendmail] table, adding each mistake to p.
func (c *Config) checkSendmail(bad func(table, key, format string, args ...any) *Error, p *problems) {
	s := &c.Sendmail
	if s.DropDir != "" && !filepath.IsAbs(s.DropDir) {
		p.add(bad("sendmail", "drop_dir", "%q is not an absolute path; write e.g. drop_dir = \"/var/spool/tlsrelay-drop\"", s.DropDir))
	} else if s.DropDir != "" && filepath.Clean(s.DropDir) == filepath.Clean(c.Queue.Dir) {
		p.add(bad("sendmail", "drop_dir", "must not be the spool directory (the spool is the relay's alone; the drop directory is where other users write); write e.g. drop_dir = \"%s-drop\"", filepath.Clean(c.Queue.Dir)))
	}
}

// SendmailView is what the `sendmail` entry needs from the configuration:
// where the relay listens, its host name (the domain of a default sender
// address), the size limit, and the drop directory. It is read without
// the rest of the checks, so that any local user can run `sendmail` even
// when key files and password files are readable by the relay alone.
type SendmailView struct {
	Listen          string
	Hostname        string
	MaxMessageBytes int64
	// DropDir is "" when the drop is off.
	DropDir string
}

// LoadSendmailView reads the keys the `sendmail` entry needs from the
// file at path, with the defaults of a full load; other keys are ignored.
func LoadSendmailView(path string) (*SendmailView, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := Default()
	var view struct {
		Server   *Server   `toml:"server"`
		Queue    *Queue    `toml:"queue"`
		Sendmail *Sendmail `toml:"sendmail"`
	}
	view.Server, view.Queue, view.Sendmail = &c.Server, &c.Queue, &c.Sendmail
	if _, err := toml.Decode(string(src), &view); err != nil {
		return nil, newError(path, 0, "", err.Error())
	}
	dir, _ := c.ResolvedDropDir()
	return &SendmailView{Listen: c.Server.Listen, Hostname: c.Server.Hostname,
		MaxMessageBytes: c.Server.MaxMessageBytes, DropDir: dir}, nil
}
