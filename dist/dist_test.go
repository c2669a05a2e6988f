// Package dist holds the files that install tlsrelay on a server (the
// systemd unit, the package configuration, the Kubernetes examples); its
// tests check them without installing anything.
package dist

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"tlsrelay/relay/config"
)

// TestUnitVerifies runs `systemd-analyze verify` on the unit, with the
// binary's path pointed at an executable that exists here (the unit names
// /usr/bin/tlsrelay, which the package installs).
func TestUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd): the unit is not verified")
	}
	unit, err := os.ReadFile("systemd/tlsrelay.service")
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	copyPath := filepath.Join(t.TempDir(), "tlsrelay.service")
	os.WriteFile(copyPath, bytes.ReplaceAll(unit, []byte("/usr/bin/tlsrelay"), []byte(self)), 0o644)
	out, err := exec.Command(sa, "verify", "--man=no", copyPath).CombinedOutput()
	// verify exits 0 on lines it ignores ("Failed to parse …, ignoring"):
	// any output is a finding.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnitIsHardenedAndFitsTheDrain checks the settings the issue asks
// for, and that systemd waits longer than the relay's own drain.
func TestUnitIsHardenedAndFitsTheDrain(t *testing.T) {
	unit, err := os.ReadFile("systemd/tlsrelay.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "User=tlsrelay", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"CapabilityBoundingSet=\n", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
		"ReadWritePaths=/var/spool/tlsrelay /var/spool/tlsrelay-drop",
		"ExecStart=/usr/bin/tlsrelay serve -config /etc/tlsrelay/config.toml",
	} {
		if !bytes.Contains(unit, []byte("\n"+want)) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	m := regexp.MustCompile(`\nTimeoutStopSec=(\d+)s\n`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("no TimeoutStopSec=<n>s")
	}
	stop, _ := time.ParseDuration(string(m[1]) + "s")
	if drain := config.Default().Server.ShutdownTimeout.Duration; stop < drain+10*time.Second {
		t.Errorf("TimeoutStopSec=%s leaves no room after shutdown_timeout %s", stop, drain)
	}
	// The paths the unit may write are those of the default configuration.
	def := config.Default()
	drop, _ := def.ResolvedDropDir()
	if def.Queue.Dir != "/var/spool/tlsrelay" || drop != "/var/spool/tlsrelay-drop" {
		t.Errorf("default spool %s and drop %s differ from the unit's ReadWritePaths", def.Queue.Dir, drop)
	}
}

// TestPackages checks the built packages' contents without installing
// them: .ci/run builds them (dist/build-packages.sh) and runs this with
// TLSRELAY_PACKAGES set to their directory.
func TestPackages(t *testing.T) {
	dir := os.Getenv("TLSRELAY_PACKAGES")
	if dir == "" {
		t.Skip("TLSRELAY_PACKAGES not set: run dist/build-packages.sh, then TLSRELAY_PACKAGES=dist/out go test ./dist (.ci/run does)")
	}
	unit, _ := os.ReadFile("systemd/tlsrelay.service")
	example, _ := os.ReadFile("../config.example.toml")
	one := func(pattern string) string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(dir, pattern))
		if len(m) != 1 {
			t.Fatalf("%s: %v, want one package", pattern, m)
		}
		return m[0]
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return string(out)
	}
	// Each entry: mode, owner/group, path, as dpkg-deb -c and rpm -qlv show them.
	mainFiles := [][3]string{
		{"-rwxr-xr-x", "root/root", "/usr/bin/tlsrelay"},
		{"-rw-r--r--", "root/root", "/usr/lib/systemd/system/tlsrelay.service"},
		{"-rw-r--r--", "root/root", "/etc/tlsrelay/config.toml"},
		{"drwx------", "tlsrelay/tlsrelay", "/var/spool/tlsrelay"},
		{"drwx-ws-wt", "tlsrelay/tlsrelay", "/var/spool/tlsrelay-drop"},
		{"-rw-r--r--", "root/root", "/usr/share/doc/tlsrelay/README.md"},
	}
	links := []string{"/usr/sbin/sendmail", "/usr/lib/sendmail", "/usr/bin/mailq"}

	t.Run("deb", func(t *testing.T) {
		deb := one("tlsrelay_*.deb")
		list := run("dpkg-deb", "-c", deb)
		for _, f := range mainFiles {
			re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(f[0]) + `\s+` + regexp.QuoteMeta(f[1]) + `\s.*\s\.` + regexp.QuoteMeta(f[2]) + `/?$`)
			if !re.MatchString(list) {
				t.Errorf("%s: no %s %s %s in:\n%s", filepath.Base(deb), f[0], f[1], f[2], list)
			}
		}
		if got := run("dpkg-deb", "-f", deb, "Package"); strings.TrimSpace(got) != "tlsrelay" {
			t.Errorf("Package: %s", got)
		}
		ctl := t.TempDir()
		run("dpkg-deb", "-e", deb, ctl)
		if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/tlsrelay/config.toml" {
			t.Errorf("conffiles: %q", b)
		}
		if b, _ := os.ReadFile(filepath.Join(ctl, "preinst")); !bytes.Contains(b, []byte("useradd --system")) {
			t.Errorf("preinst does not create the tlsrelay user:\n%s", b)
		}
		root := t.TempDir()
		run("dpkg-deb", "-x", deb, root)
		if b, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/tlsrelay.service")); !bytes.Equal(b, unit) {
			t.Error("the packaged unit is not dist/systemd/tlsrelay.service")
		}
		if b, _ := os.ReadFile(filepath.Join(root, "etc/tlsrelay/config.toml")); !bytes.Equal(b, example) {
			t.Error("the packaged configuration is not config.example.toml")
		}
		if out, err := exec.Command(filepath.Join(root, "usr/bin/tlsrelay"), "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "tlsrelay ") {
			t.Errorf("the packaged binary: %v %s", err, out)
		}

		sm := one("tlsrelay-sendmail_*.deb")
		list = run("dpkg-deb", "-c", sm)
		for _, l := range links {
			if !strings.Contains(list, "."+l+" -> /usr/bin/tlsrelay") {
				t.Errorf("%s: no link %s -> /usr/bin/tlsrelay in:\n%s", filepath.Base(sm), l, list)
			}
		}
		for field, want := range map[string]string{"Provides": "mail-transport-agent", "Conflicts": "mail-transport-agent", "Replaces": "mail-transport-agent"} {
			if got := strings.TrimSpace(run("dpkg-deb", "-f", sm, field)); got != want {
				t.Errorf("%s: %s %q, want %q", filepath.Base(sm), field, got, want)
			}
		}
		if got := run("dpkg-deb", "-f", sm, "Depends"); !strings.HasPrefix(got, "tlsrelay (= ") {
			t.Errorf("Depends: %s", got)
		}
	})

	t.Run("rpm", func(t *testing.T) {
		if _, err := exec.LookPath("rpm"); err != nil {
			t.Skip("rpm not installed (apt-get install rpm): the .rpm packages are not checked")
		}
		rpm := one("tlsrelay-[0-9]*.rpm")
		list := run("rpm", "-qlvp", rpm)
		for _, f := range mainFiles {
			owner := strings.Replace(f[1], "/", `\s+`, 1)
			re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(f[0]) + `\s+\d+\s+` + owner + `\s.*\s` + regexp.QuoteMeta(f[2]) + `$`)
			if !re.MatchString(list) {
				t.Errorf("%s: no %s %s %s in:\n%s", filepath.Base(rpm), f[0], f[1], f[2], list)
			}
		}
		if got := strings.TrimSpace(run("rpm", "-qpc", rpm)); got != "/etc/tlsrelay/config.toml" {
			t.Errorf("config files: %q", got)
		}
		if got := run("rpm", "-qp", "--scripts", rpm); !strings.Contains(got, "useradd --system") {
			t.Errorf("no user created before install:\n%s", got)
		}
		sm := one("tlsrelay-sendmail-[0-9]*.rpm")
		list = run("rpm", "-qlvp", sm)
		for _, l := range links {
			if !strings.Contains(list, l+" -> /usr/bin/tlsrelay") {
				t.Errorf("%s: no link %s in:\n%s", filepath.Base(sm), l, list)
			}
		}
		if got := run("rpm", "-qp", "--provides", sm); !strings.Contains(got, "MTA") {
			t.Errorf("provides: %s", got)
		}
	})
}

// TestKubernetesConfigLoads loads the configuration the Kubernetes example
// puts in its ConfigMap, as the relay would.
func TestKubernetesConfigLoads(t *testing.T) {
	b, err := os.ReadFile("kubernetes/tlsrelay-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "config.toml: |\n")
	if !ok {
		t.Fatal("no config.toml in the ConfigMap")
	}
	var toml strings.Builder
	for _, line := range strings.Split(block, "\n") {
		toml.WriteString(strings.TrimPrefix(line, "    ") + "\n")
	}
	t.Setenv("SMTP_PASSWORD", "x")
	if _, err := config.Parse("tlsrelay-config.yaml", toml.String()); err != nil {
		t.Fatal(err)
	}
}
