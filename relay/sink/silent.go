package sink

// Silent is an upstream that accepts TCP connections and never says a
// word: a server that hangs, or an address whose connects time out. It
// holds every connection until Close and counts them (Accepted): a Raw
// upstream without a script.
type Silent = Raw

// StartSilent listens on addr (default 127.0.0.1:0).
func StartSilent(addr string) (*Silent, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	return startRaw(addr, nil)
}
