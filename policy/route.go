package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Table maps (sender, recipient domain) to destinations.
//
// The choice for a sender and a recipient domain: among the destinations
// whose recipient patterns match the domain, one whose `senders` match the
// sender wins over one without `senders` (one whose `senders` do not match
// is not a candidate); among equals the most specific recipient pattern
// wins (exact, then the longest ".suffix", then "*"), then the most
// specific sender pattern (exact address, then local parts with '*', then
// "*@domain", then the longest ".suffix"). The null sender matches no
// sender pattern: bounces route by recipient alone. NewTable refuses two
// destinations that could both claim one (sender, recipient) with equal
// specificity, so the choice never depends on the order of the file.
type Table struct {
	exact    map[string][]claim
	suffixes map[string][]claim // ".example.com"
	fallback []claim
	all      []*Destination
	// bySender is set when some destination has senders; without, a
	// lookup is one map access as before.
	bySender bool
}

// claim is one destination's claim on one recipient pattern.
type claim struct {
	dest  *Destination
	index int // of the destination in the configuration
}

// DuplicateDomainError reports two destinations without senders that
// claim one recipient pattern.
type DuplicateDomainError struct {
	Pattern     string
	First, Then int // indexes of the two [[destination]] tables, from 0
}

func (e *DuplicateDomainError) Error() string {
	return fmt.Sprintf("domain %q is claimed by destination #%d and destination #%d; each domain pattern may appear in one destination only (to split it by sender, give one of them senders)", e.Pattern, e.First+1, e.Then+1)
}

// AmbiguousRouteError reports two destinations with senders that could
// both claim one (sender, recipient) with equal specificity.
type AmbiguousRouteError struct {
	Recipient   string // the recipient pattern both claim
	First, Then int    // indexes of the two [[destination]] tables, from 0
	// FirstSender and ThenSender are their overlapping sender patterns of
	// equal specificity (the same pattern when they claim the same pair).
	FirstSender, ThenSender string
}

func (e *AmbiguousRouteError) Error() string {
	if e.FirstSender == e.ThenSender {
		return fmt.Sprintf("destination #%d and destination #%d claim the same (sender pattern, recipient pattern) pair (%q, %q); each pair may belong to one destination only", e.First+1, e.Then+1, e.FirstSender, e.Recipient)
	}
	return fmt.Sprintf("destination #%d (sender pattern %q) and destination #%d (sender pattern %q) could both claim one sender for recipient pattern %q with equal specificity; make one of the patterns more specific or remove it from one destination", e.First+1, e.FirstSender, e.Then+1, e.ThenSender, e.Recipient)
}

// NewTable indexes dests. Two destinations without senders claiming one
// recipient pattern are an error (a *DuplicateDomainError), and so are two
// with senders that could claim one pair with equal specificity (an
// *AmbiguousRouteError): which policy applies would otherwise be an
// accident of order.
func NewTable(dests []*Destination) (*Table, error) {
	t := &Table{exact: map[string][]claim{}, suffixes: map[string][]claim{}, all: dests}
	for i, d := range dests {
		if len(d.Senders) > 0 {
			t.bySender = true
		}
		for _, p := range slices.Compact(slices.Clone(d.Domains)) {
			m := t.exact
			switch {
			case p == "*":
				m = map[string][]claim{p: t.fallback}
			case strings.HasPrefix(p, "."):
				m = t.suffixes
			}
			for _, c := range m[p] {
				if err := conflict(c, claim{d, i}, p); err != nil {
					return nil, err
				}
			}
			m[p] = append(m[p], claim{d, i})
			if p == "*" {
				t.fallback = m[p]
			}
		}
	}
	return t, nil
}

// conflict reports whether a and b, both claiming recipient pattern p,
// could be chosen for one (sender, recipient) with equal specificity.
func conflict(a, b claim, p string) error {
	if a.dest == b.dest {
		return nil
	}
	if len(a.dest.Senders) == 0 || len(b.dest.Senders) == 0 {
		if len(a.dest.Senders) == 0 && len(b.dest.Senders) == 0 {
			return &DuplicateDomainError{Pattern: p, First: a.index, Then: b.index}
		}
		return nil // the one whose senders match wins
	}
	for _, sa := range a.dest.Senders {
		for _, sb := range b.dest.Senders {
			if sa.specificity() == sb.specificity() && sa.overlaps(sb) {
				return &AmbiguousRouteError{Recipient: p, First: a.index, Then: b.index, FirstSender: sa.String(), ThenSender: sb.String()}
			}
		}
	}
	return nil
}

// Route is the choice of a destination for one (sender, recipient domain)
// and why: the relay logs it, `tlsrelay route` prints it.
type Route struct {
	// Destination is the one chosen; nil when none claims the pair.
	Destination *Destination
	// Recipient and Sender are the patterns that matched; Sender is ""
	// when the destination has no senders (it takes any sender).
	Recipient, Sender string
	// Considered lists every destination whose recipient patterns match
	// the domain, in order of precedence, the chosen one included.
	Considered []Candidate
}

// Candidate is one destination a Route considered.
type Candidate struct {
	Destination *Destination
	Recipient   string // its most specific recipient pattern that matches
	Sender      string // its most specific sender pattern that matches, if any
	// Verdict says why it was chosen or not, in words.
	Verdict string
}

// Lookup returns the destination for a recipient domain and any sender
// (as for the null sender): an exact entry, else the longest matching
// ".suffix", else "*", else nil (refuse).
func (t *Table) Lookup(domain string) *Destination {
	return t.Choose(Sender{}, domain)
}

// Choose returns the destination for mail from sender to a recipient at
// domain, or nil (refuse); see Table for the rules.
func (t *Table) Choose(sender Sender, domain string) *Destination {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	if domain == "" {
		return nil
	}
	if !t.bySender {
		// One claim per pattern: the most specific pattern decides.
		var found *Destination
		t.walk(domain, func(_ string, cs []claim) bool {
			found = cs[0].dest
			return false
		})
		return found
	}
	return t.Route(sender, domain).Destination
}

// walk calls fn with the claims of each recipient pattern matching domain,
// from the most specific, until fn returns false.
func (t *Table) walk(domain string, fn func(pattern string, cs []claim) bool) {
	if cs := t.exact[domain]; len(cs) > 0 && !fn(domain, cs) {
		return
	}
	// Walk the parent domains from the nearest: the first ".suffix" found
	// is the longest that matches.
	for i := strings.IndexByte(domain, '.'); i >= 0; {
		if cs := t.suffixes[domain[i:]]; len(cs) > 0 && !fn(domain[i:], cs) {
			return
		}
		j := strings.IndexByte(domain[i+1:], '.')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	if len(t.fallback) > 0 {
		fn("*", t.fallback)
	}
}

// Route chooses the destination for mail from sender to a recipient at
// domain and explains the choice (see Table for the rules).
func (t *Table) Route(sender Sender, domain string) Route {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	var r Route
	if domain == "" {
		return r
	}
	type cand struct {
		Candidate
		spec    [2]int // of the matching sender pattern
		matched bool   // its senders match (false: it has none, or they do not)
		has     bool   // it has senders
	}
	var cands []cand
	seen := map[*Destination]bool{}
	t.walk(domain, func(p string, cs []claim) bool {
		var level []cand
		for _, c := range cs {
			if seen[c.dest] {
				continue // a more specific pattern of it matched already
			}
			seen[c.dest] = true
			k := cand{Candidate: Candidate{Destination: c.dest, Recipient: p}, has: len(c.dest.Senders) > 0}
			for _, sp := range c.dest.Senders {
				if sp.Match(sender) && (!k.matched || moreSpecific(sp.specificity(), k.spec)) {
					k.matched, k.spec, k.Sender = true, sp.specificity(), sp.String()
				}
			}
			level = append(level, k)
		}
		// Within one recipient pattern: matching senders by specificity,
		// then the one without senders, then those whose senders do not
		// match.
		slices.SortStableFunc(level, func(a, b cand) int {
			rank := func(c cand) int {
				switch {
				case c.matched:
					return 0
				case !c.has:
					return 1
				}
				return 2
			}
			if ra, rb := rank(a), rank(b); ra != rb {
				return ra - rb
			}
			if moreSpecific(a.spec, b.spec) {
				return -1
			}
			if moreSpecific(b.spec, a.spec) {
				return 1
			}
			return 0
		})
		cands = append(cands, level...)
		return true
	})
	chosen := -1
	for i, c := range cands {
		if c.matched {
			chosen = i
			break
		}
	}
	if chosen < 0 {
		for i, c := range cands {
			if !c.has {
				chosen = i
				break
			}
		}
	}
	for i, c := range cands {
		switch {
		case i == chosen && c.matched:
			c.Verdict = fmt.Sprintf("chosen: its sender pattern %q matches and it claims the domain by %q", c.Sender, c.Recipient)
		case i == chosen:
			c.Verdict = fmt.Sprintf("chosen: it claims the domain by %q and takes any sender", c.Recipient)
		case c.has && !c.matched && sender.IsNull():
			c.Verdict = "not a candidate: the null sender <> matches no senders pattern"
		case c.has && !c.matched:
			c.Verdict = "not a candidate: none of its senders matches"
		case chosen >= 0 && cands[chosen].matched && !c.matched:
			c.Verdict = "not chosen: a destination whose senders match wins over one without senders"
		case chosen >= 0 && cands[chosen].Recipient != c.Recipient:
			c.Verdict = fmt.Sprintf("not chosen: %q is a less specific recipient pattern than %q", c.Recipient, cands[chosen].Recipient)
		default:
			c.Verdict = fmt.Sprintf("not chosen: %q is a less specific sender pattern than %q", c.Sender, cands[chosen].Sender)
		}
		r.Considered = append(r.Considered, c.Candidate)
	}
	if chosen >= 0 {
		r.Destination, r.Recipient, r.Sender = cands[chosen].Destination, cands[chosen].Recipient, cands[chosen].Sender
	}
	return r
}

// Claims reports whether any destination claims domain for some sender.
func (t *Table) Claims(domain string) bool {
	domain = strings.TrimSuffix(strings.ToLower(domain), ".")
	found := false
	t.walk(domain, func(string, []claim) bool { found = true; return false })
	return found && domain != ""
}

// Destinations returns every destination, in configuration order.
func (t *Table) Destinations() []*Destination { return t.all }
