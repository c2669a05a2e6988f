package main

import (
	"net"
	"os"
)

// sdNotify tells systemd about the service's state (the sd_notify
// protocol: one datagram to the socket named by $NOTIFY_SOCKET, "@" for
// an abstract socket, which Go's net package understands). Without that
// variable it does nothing. It is these few lines rather than
// go-systemd's daemon package: the protocol is all that is needed.
func sdNotify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
