package policy

// Secret holds a password. Printing it in any way (fmt verbs, JSON, TOML,
// slog) shows a mask, so a Destination can be logged or dumped without
// leaking; Reveal is the one way to the value, for the AUTH exchange.
type Secret string

const mask = "********"

// Reveal returns the secret itself.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string   { return mask }
func (s Secret) GoString() string { return mask }

// MarshalText masks the secret in JSON, TOML and slog output.
func (s Secret) MarshalText() ([]byte, error) { return []byte(mask), nil }
