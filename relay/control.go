package relay

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"tlsrelay/relay/spool"
)

// Control operations change queued messages on behalf of an operator
// (`tlsrelay queue`). A running relay performs them itself, received on a
// unix socket in the spool directory, because only it knows which message
// a worker is delivering this instant; with no relay running, the queue
// command takes the spool's lock and performs them directly.
const (
	OpRetry   = "retry"   // attempt now
	OpHold    = "hold"    // never attempt until released
	OpRelease = "release" // undo hold, attempt now
	OpDelete  = "delete"  // remove without a bounce
	OpBounce  = "bounce"  // give up now: DSN to the sender, remove
)

// ControlRequest is one operation: on one message, or on all (ID "").
type ControlRequest struct {
	Op string `json:"op"`
	ID string `json:"id,omitempty"`
}

// ControlResponse reports what an operation did.
type ControlResponse struct {
	Done  []string `json:"done,omitempty"` // ids affected
	Error string   `json:"error,omitempty"`
}

// ControlSocket is the path of the control socket of a spool directory.
func ControlSocket(spoolDir string) string { return filepath.Join(spoolDir, "control.sock") }

// Control performs req and reports which messages it affected.
func (r *Relay) Control(req ControlRequest) ControlResponse {
	ids := []string{req.ID}
	if req.ID == "" {
		if req.Op != OpRetry {
			return ControlResponse{Error: req.Op + " needs a queue id (only retry takes -all)"}
		}
		var err error
		if ids, err = r.store.List(); err != nil {
			return ControlResponse{Error: err.Error()}
		}
	}
	if req.Op == OpRetry {
		r.queue.resume() // "try now" means a real attempt, suspended or not
	}
	var resp ControlResponse
	for _, id := range ids {
		if err := r.controlOne(req.Op, id); err != nil {
			if req.ID == "" && (errors.Is(err, errHeld) || errors.Is(err, errGone)) {
				continue // retry -all leaves held messages alone, and skips one delivered meanwhile
			}
			resp.Error = fmt.Sprintf("%s: %v", id, err)
			return resp
		}
		resp.Done = append(resp.Done, id)
	}
	return resp
}

var (
	errHeld = errors.New("the message is held; release it to retry")
	errGone = errors.New("no such message in the queue")
)

func (r *Relay) controlOne(op, id string) error {
	var after func()
	err := r.queue.lease(id, func() error {
		msg, err := r.store.Open(id)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				r.queue.forget(id)
				return errGone
			}
			return err
		}
		defer msg.Close()
		st, err := r.store.LoadState(msg.Envelope)
		if err != nil {
			return err
		}
		switch op {
		case OpRetry:
			if st.Held {
				return errHeld
			}
			after = func() { r.queue.schedule(id, 0) }
		case OpHold:
			if err := r.store.Spill(id); err != nil {
				return err
			}
			st.Held = true
			if err := r.store.SaveState(id, st); err != nil {
				return err
			}
		case OpRelease:
			st.Held = false
			if err := r.store.SaveState(id, st); err != nil {
				return err
			}
			after = func() { r.queue.schedule(id, 0) }
		case OpDelete:
			if err := r.store.Remove(id); err != nil {
				return err
			}
			r.queue.forget(id)
		case OpBounce:
			for i := range st.Recipients {
				rc := &st.Recipients[i]
				if rc.Status == spool.StatusPending {
					rc.Status = spool.StatusFailed
					rc.Reason = "returned by the relay's operator before delivery; last problem: " + nonEmpty(rc.Reason, "none")
					rc.Class = nonEmpty(rc.Class, "operator")
					rc.When = r.now()
				}
			}
			if err := r.bounce(msg, st); err != nil {
				return err
			}
			if err := r.store.Remove(id); err != nil {
				return err
			}
			r.queue.forget(id)
		default:
			return fmt.Errorf("unknown operation %q", op)
		}
		return nil
	})
	if err == nil {
		r.log.Info("queue operation", "op", op, "id", id)
		if after != nil {
			after()
		}
	}
	return err
}

// serveControl answers control requests on the spool's socket.
func (r *Relay) serveControl(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var req ControlRequest
			if err := json.NewDecoder(io.LimitReader(c, 64<<10)).Decode(&req); err != nil {
				json.NewEncoder(c).Encode(ControlResponse{Error: "bad request: " + err.Error()})
				return
			}
			if req.Op == OpList {
				r.streamList(c)
				return
			}
			json.NewEncoder(c).Encode(r.Control(req))
		}()
	}
}

func (r *Relay) listenControl() (net.Listener, error) {
	path := ControlSocket(r.store.Dir())
	os.Remove(path) // a socket left by a process that died; the spool lock proves it is gone
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	os.Chmod(path, 0o600)
	go r.serveControl(ln)
	return ln, nil
}

// ErrNoRelay means no relay is running on the spool.
var ErrNoRelay = errors.New("no tlsrelay is running on this spool")

// SendControl sends req to the relay running on spoolDir. It returns
// ErrNoRelay when there is none, so the caller can act offline.
func SendControl(spoolDir string, req ControlRequest, timeout time.Duration) (ControlResponse, error) {
	c, err := net.DialTimeout("unix", ControlSocket(spoolDir), 5*time.Second)
	if err != nil {
		return ControlResponse{}, ErrNoRelay
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return ControlResponse{}, err
	}
	var resp ControlResponse
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&resp); err != nil {
		return ControlResponse{}, fmt.Errorf("no answer from the relay: %w", err)
	}
	return resp, nil
}
