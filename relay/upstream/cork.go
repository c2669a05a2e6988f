package upstream

import (
	"net"
	"sync"
)

// corkConn sits between the TLS connection and the TCP connection. While
// corked it gathers TLS's writes — one per record of at most 16 KiB — and
// writes them on in large writes: a large body costs a system call per
// corkSize bytes instead of one per record. Uncorked, every write goes
// straight through (the handshake, commands, small messages).
type corkConn struct {
	net.Conn
	buf *[]byte // gathered records while corked; nil when not
}

// corkSize is how much corkConn gathers before writing: sixteen full TLS
// records with their overhead.
const corkSize = 16 * (16<<10 + 256)

var corkBuffers = sync.Pool{New: func() any { b := make([]byte, 0, corkSize); return &b }}

// cork starts gathering writes.
func (c *corkConn) cork() {
	if c.buf == nil {
		c.buf = corkBuffers.Get().(*[]byte)
	}
}

// uncork writes what was gathered and lets writes through again.
func (c *corkConn) uncork() error {
	if c.buf == nil {
		return nil
	}
	err := c.flush()
	corkBuffers.Put(c.buf)
	c.buf = nil
	return err
}

func (c *corkConn) flush() error {
	b := *c.buf
	*c.buf = b[:0]
	if len(b) == 0 {
		return nil
	}
	_, err := c.Conn.Write(b)
	return err
}

func (c *corkConn) Write(p []byte) (int, error) {
	if c.buf == nil {
		return c.Conn.Write(p)
	}
	if len(*c.buf)+len(p) > cap(*c.buf) {
		if err := c.flush(); err != nil {
			return 0, err
		}
		if len(p) > cap(*c.buf) {
			return c.Conn.Write(p)
		}
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}
