package relay

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"tlsrelay/policy"
)

// throttleWords are what providers say when they throttle a client
// rather than refuse a message.
var throttleWords = []string{"too many connections", "too many messages", "rate limit", "rate-limit", "ratelimit",
	"throttl", "try again later", "too many concurrent", "exceeded", "slow down"}

// namedWait finds the time a throttling reply asks for: "try again in 30
// seconds", "wait 5 minutes", "after 120s".
var namedWait = regexp.MustCompile(`(?i)\b(?:in|after|wait)\s+(\d{1,5})\s*(seconds?|secs?|s|minutes?|mins?|m)\b`)

// throttleOf reports whether f, a failure of a whole transaction, is the
// upstream throttling the relay: a 421 (greeting or any reply), a 4.3.2,
// or a 4xx (typically 4.7.x) whose text says so: "too many connections",
// "rate limit", "try again later". Greylisting ("451 4.7.1 greylisted")
// is not throttling. named is the wait the reply names, 0
// when it names none.
func throttleOf(f *policy.Failure) (named time.Duration, ok bool) {
	if f == nil || f.Class != policy.UpstreamTemporary {
		return 0, false
	}
	var se *smtp.SMTPError
	if !errors.As(f.Err, &se) || se.Code/100 != 4 {
		return 0, false
	}
	text := strings.ToLower(se.Message)
	// A 4.7.x code alone is not enough: greylisting (451 4.7.1) is about
	// one message, and must not back off the hop for every other one.
	ok = se.Code == 421 || se.EnhancedCode == smtp.EnhancedCode{4, 3, 2}
	for _, w := range throttleWords {
		ok = ok || strings.Contains(text, w)
	}
	if !ok {
		return 0, false
	}
	if m := namedWait.FindStringSubmatch(se.Message); m != nil {
		n, _ := strconv.Atoi(m[1])
		unit := time.Second
		if strings.HasPrefix(strings.ToLower(m[2]), "m") {
			unit = time.Minute
		}
		named = min(time.Duration(n)*unit, 24*time.Hour)
	}
	return named, true
}
