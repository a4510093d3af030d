// Package qmp speaks the two JSON line protocols of a QEMU VM: the QEMU
// Machine Protocol of its monitor socket (Monitor) and the same framing as
// spoken by the guest agent, qemu-ga, over its virtio-serial channel
// (Agent). Both sockets serve one client at a time and queue any other
// silently, so every connect, read and write here is bounded by the
// caller's context: a socket held by someone else shows up as ErrBusy, not
// as a hang.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// Errors a connection classifies its failures into; they wrap the cause.
var (
	// ErrNoSocket: nothing listens at the path (no such file, or a socket
	// left behind by a process that died).
	ErrNoSocket = errors.New("nothing listens on the socket")
	// ErrBusy: the socket accepted the connection but said nothing before
	// the deadline, which is how QEMU queues a second client while the
	// first holds it; or its queue is full.
	ErrBusy = errors.New("the socket is held by another client")
	// ErrClosed: the other end closed the connection, e.g. because the VM
	// process exited.
	ErrClosed = errors.New("the connection was closed")
)

// Error is an error reply: {"error": {"class": ..., "desc": ...}}.
type Error struct {
	// Class is QEMU's error class, e.g. "GenericError", "CommandNotFound".
	Class string `json:"class"`
	// Desc is QEMU's own message.
	Desc string `json:"desc"`
}

func (e *Error) Error() string { return e.Desc }

// conn is one client connection: JSON objects out, lines in. Every call
// sets the socket's deadline from its context, and a context cancelled
// without a deadline interrupts the blocked call. What it holds of the
// other end's data is bounded: a read buffer, and one frame of at most
// the framer's bound.
type conn struct {
	c    net.Conn
	path string
	f    *framer
	rbuf []byte // received, not yet framed: rbuf[r:w]
	r, w int
}

// readSize is how much a connection reads from its socket at a time.
const readSize = 64 << 10

// dial connects to the unix socket at path.
func dial(ctx context.Context, path string) (*conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%s: %w: %w", path, ErrNoSocket, err)
		case errors.Is(err, syscall.EAGAIN):
			return nil, fmt.Errorf("%s: %w: %w", path, ErrBusy, err)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%s: %w", path, ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &conn{c: c, path: path, f: newFramer(4<<10, 64<<10), rbuf: make([]byte, readSize)}, nil
}

// limit bounds the frames read from now on: strings keep maxString
// characters, a frame at most maxFrame bytes.
func (c *conn) limit(maxString, maxFrame int) { c.f.setLimits(maxString, maxFrame) }

// Close closes the connection.
func (c *conn) Close() error { return c.c.Close() }

// bound applies ctx to the socket for one call; the returned function
// undoes the cancellation hook.
func (c *conn) bound(ctx context.Context) func() bool {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Time{}
	}
	_ = c.c.SetDeadline(deadline)
	return context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
}

// fail classifies an I/O error of a call bounded by ctx.
func (c *conn) fail(ctx context.Context, what string, err error) error {
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", what, c.path, ctx.Err())
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%s %s: %w", what, c.path, context.DeadlineExceeded)
	case errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.EOF):
		return fmt.Errorf("%s %s: %w: %w", what, c.path, ErrClosed, err)
	}
	return fmt.Errorf("%s %s: %w", what, c.path, err)
}

// send writes prefix (may be nil) and v as one JSON line.
func (c *conn) send(ctx context.Context, prefix []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	msg := append(append(append([]byte{}, prefix...), data...), '\n')
	stop := c.bound(ctx)
	defer stop()
	if _, err := c.c.Write(msg); err != nil {
		return c.fail(ctx, "write to", err)
	}
	return nil
}

// line returns the next line received, without its end, and the members
// whose string values it cut (see framer). A line longer than the bound is
// read past and answered ErrFrameTooLong, so the next call starts on the
// next line; a frame cut by a timeout goes on where it was at the next
// call, so a reply cut by one deadline is neither lost to nor mistaken by
// the next reader.
func (c *conn) line(ctx context.Context) ([]byte, []string, error) {
	stop := c.bound(ctx)
	defer stop()
	for {
		if c.r < c.w {
			n, done := c.f.scan(c.rbuf[c.r:c.w])
			c.r += n
			if done {
				line, cuts, err := c.f.take()
				if err != nil {
					return nil, nil, fmt.Errorf("read from %s: %w", c.path, err)
				}
				return line, cuts, nil
			}
		}
		c.r, c.w = 0, 0
		n, err := c.c.Read(c.rbuf)
		c.w = n
		if err != nil && n == 0 {
			return nil, nil, c.fail(ctx, "read from", err)
		}
	}
}

// message is any line a QEMU socket sends.
type message struct {
	Greeting  json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        json.RawMessage `json:"id"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// request is a command.
type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        any    `json:"id,omitempty"`
}

// decodeReturn unmarshals a reply's return value into out, if out is not
// nil.
func decodeReturn(cmd string, m message, out any) error {
	if m.Error != nil {
		return m.Error
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(m.Return, out); err != nil {
		return fmt.Errorf("%s: unexpected reply %s: %w", cmd, truncate(m.Return), err)
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
