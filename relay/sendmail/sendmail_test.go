package sendmail

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/relay/sink"
)

func TestParseArgs(t *testing.T) {
	cases := []struct {
		args []string
		want Options
	}{
		{[]string{"-t", "-i"}, Options{ExtractRecipients: true, IgnoreDots: true}},
		{[]string{"-ti"}, Options{ExtractRecipients: true, IgnoreDots: true}},
		{[]string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "u@d"}, Options{FullName: "CronDaemon", IgnoreDots: true, EightBit: true, Recipients: []string{"u@d"}}},
		{[]string{"-i", "--", "a@d", "-b@d"}, Options{IgnoreDots: true, Recipients: []string{"a@d", "-b@d"}}},
		{[]string{"-oi", "-f", "s@d", "-F", "Full Name", "a@d"}, Options{IgnoreDots: true, Sender: "s@d", SenderSet: true, FullName: "Full Name", Recipients: []string{"a@d"}}},
		{[]string{"-fs@d", "-r", "r@d"}, Options{Sender: "r@d", SenderSet: true}},
		{[]string{"-bs", "-C", "/etc/x.toml"}, Options{Mode: ModeSMTP, ConfigFile: "/etc/x.toml"}},
		{[]string{"-bm", "-v", "-U", "-odb", "-odi", "-om", "-oee", "-oep", "-oeq", "-oew", "-B", "7BIT", "a@d"}, Options{Verbose: true, Recipients: []string{"a@d"}}},
	}
	for _, c := range cases {
		got, err := ParseArgs(c.args)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}
	for _, bad := range [][]string{{"-X"}, {"-bp"}, {"-q"}, {"-odq"}, {"-f"}, {"-tX"}, {"-Bbinary"}, {"-N", "never"}} {
		var ue *UsageError
		if _, err := ParseArgs(bad); !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a UsageError", bad, err)
		}
	}
}

var local = Local{User: "www-data", Hostname: "web1.example.test", MaxBytes: 1 << 20, Now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}

func TestPrepare(t *testing.T) {
	o := Options{ExtractRecipients: true, IgnoreDots: true, Recipients: []string{"root"}}
	in := "To: \"Doe, Jane\" <jane@x.test>, undisclosed-recipients:;\nbcc: hidden@x.test,\n\tsecond@x.test\nSubject: hi\n\nbody\n"
	m, err := Prepare(o, strings.NewReader(in), local)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.Envelope.Recipients, ","); got != "root@web1.example.test,jane@x.test,hidden@x.test,second@x.test" {
		t.Errorf("recipients %s", got)
	}
	if m.Envelope.From != "www-data@web1.example.test" {
		t.Errorf("sender %s", m.Envelope.From)
	}
	want := "To: \"Doe, Jane\" <jane@x.test>, undisclosed-recipients:;\r\nSubject: hi\r\nFrom: <www-data@web1.example.test>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\nMessage-ID: <"
	if !strings.HasPrefix(string(m.Data), want) || !strings.HasSuffix(string(m.Data), "@web1.example.test>\r\n\r\nbody\r\n") {
		t.Errorf("message:\n%q\nwant it to start with\n%q", m.Data, want)
	}
	// No header at all: the first line is body, and a header is put before it.
	m, err = Prepare(Options{Recipients: []string{"a@x.test"}}, strings.NewReader("just text, no header\n"), local)
	if err != nil || !strings.HasSuffix(string(m.Data), "\r\n\r\njust text, no header\r\n") || !strings.HasPrefix(string(m.Data), "From: ") {
		t.Errorf("headerless input: %q %v", m.Data, err)
	}
	// Too large for max_message_bytes.
	_, err = Prepare(Options{Recipients: []string{"a@x.test"}}, strings.NewReader(strings.Repeat("x", 100)+"\n"), Local{User: "u", Hostname: "h", MaxBytes: 50, Now: local.Now})
	var de *DataError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "max_message_bytes") {
		t.Errorf("too large: %v", err)
	}
}

// TestSMTPSessionFallsBackToTheDropDirectory: `sendmail -bs` with the relay
// down accepts the transaction into the drop directory, with the
// envelope the program gave, and says so in its reply.
func TestSMTPSessionFallsBackToTheDropDirectory(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	down := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	r := &Relay{Addr: down, Helo: "web1.example.test", DropDir: dir}
	prog, us := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- r.ServeSMTP(us, us, "web1.example.test", 1<<20) }()
	c := smtp.NewClient(prog)
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@x.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, rc := range []string{"a@x.test", "b@x.test"} {
		if err := c.Rcpt(rc, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: s\r\n\r\n.leading dot\r\n"))
	resp, err := w.CloseWithResponse()
	if err != nil || !strings.Contains(resp.StatusText, "drop directory") {
		t.Fatalf("end of data: %v %v", resp, err)
	}
	c.Quit()
	us.Close()
	<-done
	files, _ := filepath.Glob(filepath.Join(dir, "msg.*"))
	if len(files) != 1 {
		t.Fatalf("drop directory: %v", files)
	}
	b, _ := os.ReadFile(files[0])
	want := `{"from":"app@x.test","rcpt":["a@x.test","b@x.test"],"8bitmime":true}` + "\nSubject: s\r\n\r\n.leading dot\r\n"
	if string(b) != want {
		t.Errorf("drop file %q, want %q", b, want)
	}
}

// TestSMTPSessionRelayClosingFallsBack: a relay that answers 421 (it is
// stopping) does not make the program's transaction fail: it goes to the
// drop directory; a refusal for good is passed on as the relay gave it.
func TestSMTPSessionRelayClosingFallsBack(t *testing.T) {
	relay, err := sink.Start(sink.Options{NoTLS: true, RefuseMail: func(from string) *smtp.SMTPError {
		if from == "closing@x.test" {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down"}
		}
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender refused"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	dir := t.TempDir()
	r := &Relay{Addr: relay.Addr(), Helo: "web1.example.test", DropDir: dir}
	prog, us := net.Pipe()
	go r.ServeSMTP(us, us, "web1.example.test", 1<<20)
	c := smtp.NewClient(prog)
	defer c.Close()
	if err := c.Mail("refused@x.test", nil); err == nil || !strings.Contains(err.Error(), "Sender refused") {
		t.Errorf("MAIL of a refused sender: %v, want the relay's 553", err)
	}
	if err := c.SendMail("closing@x.test", []string{"a@x.test"}, strings.NewReader("Subject: s\r\n\r\nx\r\n")); err != nil {
		t.Fatalf("with the relay closing: %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "msg.*")); len(files) != 1 {
		t.Errorf("drop directory: %v", files)
	}
}
