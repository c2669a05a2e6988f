// Package sendmail gives local programs the sendmail command they expect:
// its command line, its reading of the message from standard input
// (lines, not SMTP), and the hand-over of the message to the relay's front
// door, or to the drop directory (package drop) when the relay cannot take
// it now. `-bs` serves an SMTP session on standard input and output.
package sendmail

import (
	"fmt"
	"strings"
)

// Mode is what sendmail is asked to do (-b).
type Mode int

// Modes.
const (
	ModeDeliver Mode = iota // -bm, the default: a message on standard input
	ModeSMTP                // -bs: an SMTP session on standard input and output
)

// Options are a sendmail command line, parsed.
type Options struct {
	Mode Mode
	// Sender is the envelope sender of -f or -r, as given (angle
	// brackets and all); SenderSet says whether one was given.
	Sender    string
	SenderSet bool
	// FullName is -F: the display name of a From: field that is added.
	FullName string
	// ExtractRecipients is -t: recipients from To:, Cc: and Bcc: as well.
	ExtractRecipients bool
	// IgnoreDots is -i or -oi: a line with a single dot does not end the
	// message.
	IgnoreDots bool
	// EightBit is -B8BITMIME.
	EightBit bool
	Verbose  bool
	// ConfigFile is -C: a tlsrelay configuration file.
	ConfigFile string
	Recipients []string
}

// UsageError is a command line sendmail does not accept (EX_USAGE).
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// ignoredO are the -o options accepted with no effect, as Postfix does.
var ignoredO = map[string]bool{"em": true, "ee": true, "ep": true, "eq": true, "ew": true, "db": true, "di": true, "m": true}

// ParseArgs parses a sendmail command line (without the program name).
// Options may be combined ("-ti") and their values attached ("-fuser@x")
// or separate ("-f user@x"); "--" ends the options; every other argument
// is a recipient.
func ParseArgs(args []string) (Options, error) {
	var o Options
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			o.Recipients = append(o.Recipients, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			o.Recipients = append(o.Recipients, a)
			continue
		}
		group := a[1:]
		for j := 0; j < len(group); j++ {
			letter := group[j]
			switch letter {
			case 't':
				o.ExtractRecipients = true
				continue
			case 'i':
				o.IgnoreDots = true
				continue
			case 'v':
				o.Verbose = true
				continue
			case 'U': // "initial user submission": nothing to do
				continue
			case 'f', 'r', 'F', 'B', 'C', 'b', 'o':
			default:
				return o, &UsageError{Msg: fmt.Sprintf("option -%c is not supported", letter)}
			}
			// An option with a value: the rest of the group, or the next argument.
			val := group[j+1:]
			if val == "" {
				if i+1 >= len(args) {
					return o, &UsageError{Msg: fmt.Sprintf("option -%c needs a value", letter)}
				}
				i++
				val = args[i]
			}
			if err := o.set(letter, val); err != nil {
				return o, err
			}
			break
		}
	}
	return o, nil
}

func (o *Options) set(letter byte, val string) error {
	switch letter {
	case 'f', 'r':
		o.Sender, o.SenderSet = val, true
	case 'F':
		o.FullName = val
	case 'C':
		o.ConfigFile = val
	case 'B':
		switch strings.ToUpper(val) {
		case "8BITMIME":
			o.EightBit = true
		case "7BIT":
			o.EightBit = false
		default:
			return &UsageError{Msg: fmt.Sprintf("-B %s: the body type is 7BIT or 8BITMIME", val)}
		}
	case 'b':
		switch val {
		case "m":
			o.Mode = ModeDeliver
		case "s":
			o.Mode = ModeSMTP
		default:
			return &UsageError{Msg: fmt.Sprintf("-b%s is not supported (only -bm, the default, and -bs)", val)}
		}
	case 'o':
		switch {
		case val == "i":
			o.IgnoreDots = true
		case ignoredO[val]:
		default:
			return &UsageError{Msg: fmt.Sprintf("-o%s is not supported (accepted: -oi, and -oem -oee -oep -oeq -oew -odb -odi -om, which have no effect)", val)}
		}
	}
	return nil
}
