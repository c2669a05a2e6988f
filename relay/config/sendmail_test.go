package config

import (
	"strings"
	"testing"
)

func TestSendmailTable(t *testing.T) {
	base := "[queue]\ndir = \"/var/spool/x\"\n[[destination]]\ndomains = [\"*\"]\nupstream = \"mx.example.com:587\"\n"
	c, err := Parse("t.toml", base)
	if err != nil {
		t.Fatal(err)
	}
	if dir, explicit := c.ResolvedDropDir(); dir != "/var/spool/x-drop" || explicit {
		t.Errorf("default drop dir %q explicit=%v", dir, explicit)
	}
	c, err = Parse("t.toml", base+"[sendmail]\ndrop = false\n")
	if err != nil {
		t.Fatal(err)
	}
	if dir, _ := c.ResolvedDropDir(); dir != "" {
		t.Errorf("drop = false: %q", dir)
	}
	for src, want := range map[string]string{
		base + "[sendmail]\ndrop_dir = \"relative\"\n":      "sendmail.drop_dir: \"relative\" is not an absolute path",
		base + "[sendmail]\ndrop_dir = \"/var/spool/x/\"\n": "sendmail.drop_dir: must not be the spool directory",
	} {
		if _, err := Parse("t.toml", src); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}
