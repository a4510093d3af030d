package qmp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Agent is a session with a VM's guest agent (qemu-ga), synchronised: any
// reply left over from an earlier client has been read past. It is not
// safe for concurrent use.
type Agent struct {
	c *conn
	// stale: a reply was dropped as too long, or cut by a deadline, and
	// the next command synchronises first.
	stale bool
}

// Bounds of what an Agent takes from the guest (contract §9.5): a reply
// carries at most DataLimit bytes of data in any string, base64-encoded,
// unless a command asks for more (a file read's count, a command's output
// bound), and a reply is at most frameFor of its strings' bound.
const DataLimit = 64 << 10

// b64 is the length of n bytes in base64.
func b64(n int) int { return (n + 2) / 3 * 4 }

// frameFor is the longest reply taken whose strings keep maxString
// characters: two such strings, each character as "\/" at worst, and room
// for the rest.
func frameFor(maxString int) int { return 4*maxString + 64<<10 }

// syncTry bounds one guest-sync-delimited attempt; an agent that is up
// answers in milliseconds.
const syncTry = 500 * time.Millisecond

// ErrNoAgent: nothing answered the agent's channel before the deadline.
// The guest has not started its agent, or has not booted that far.
var ErrNoAgent = errors.New("the guest agent does not answer")

// DialAgent connects to the agent socket at path and synchronises with the
// agent: guest-sync-delimited with a random id, resent every half second
// on the same connection until the agent answers or ctx ends (ErrNoAgent).
// QEMU holds requests for an agent that has not opened its port yet, so a
// resend is not lost, and replies meant for an earlier client arrive
// first: everything before the reply carrying the id is discarded.
func DialAgent(ctx context.Context, path string) (*Agent, error) {
	c, err := dial(ctx, path)
	if err != nil {
		return nil, err
	}
	a := &Agent{c: c}
	a.bound(DataLimit)
	if err := a.sync(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return a, nil
}

// Close ends the session.
func (a *Agent) Close() error { return a.c.Close() }

// bound makes the replies read from now on carry at most data bytes in
// any string.
func (a *Agent) bound(data int) {
	s := b64(max(data, DataLimit))
	a.c.limit(s, frameFor(s))
}

// sync performs the guest-sync-delimited handshake. The 0xFF byte sent
// first makes the agent drop any half-received request; its reply is
// prefixed with 0xFF, which marks where the stale data ends.
//
// Every attempt has an id of its own, and only the reply to the last one
// sent ends the handshake: the agent answers in order, so everything an
// earlier attempt provoked (its reply, the parse error for its 0xFF) has
// been read past by then, and cannot be taken for the next command's reply.
func (a *Agent) sync(ctx context.Context) error {
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id := int64(binary.LittleEndian.Uint64(b[:]) >> 2) // 62 bits: exact in JSON
		req := request{Execute: "guest-sync-delimited", Arguments: map[string]int64{"id": id}}
		if err := a.c.send(ctx, []byte{0xff}, req); err != nil {
			// The socket's deadline is ctx's and may fire a moment
			// before ctx reports it.
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("%s: %w (%w)", a.c.path, ErrNoAgent, ctx.Err())
			}
			return err
		}
		try, cancel := context.WithTimeout(ctx, syncTry)
		ok, err := a.awaitSync(try, id)
		cancel()
		switch {
		case ok:
			return nil
		case ctx.Err() != nil, errors.Is(err, context.DeadlineExceeded) && time.Until(deadlineOf(ctx)) <= 0:
			return fmt.Errorf("%s: %w (%w)", a.c.path, ErrNoAgent, ctx.Err())
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			return err
		}
	}
}

// deadlineOf is ctx's deadline, or the far future.
func deadlineOf(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Hour)
}

// awaitSync reads until the reply carrying id.
func (a *Agent) awaitSync(ctx context.Context, id int64) (bool, error) {
	for {
		line, _, err := a.c.line(ctx)
		if errors.Is(err, ErrFrameTooLong) {
			continue // not the reply to a sync: that is short
		}
		if err != nil {
			return false, err
		}
		i := bytes.LastIndexByte(line, 0xff)
		if i < 0 {
			continue
		}
		var msg struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(line[i+1:], &msg) == nil && msg.Return != nil && *msg.Return == id {
			return true, nil
		}
	}
}

// Execute runs an agent command and decodes its return value into out.
// Its reply carries at most DataLimit bytes in any string.
func (a *Agent) Execute(ctx context.Context, cmd string, args, out any) error {
	_, err := a.execute(ctx, cmd, args, out, DataLimit)
	return err
}

// execute runs cmd, taking a reply whose strings carry at most data bytes
// (base64), and returns the members whose values were cut to that. A
// session that lost track of the replies (one dropped as too long, or cut
// by a deadline) synchronises first.
func (a *Agent) execute(ctx context.Context, cmd string, args, out any, data int) ([]string, error) {
	if a.stale {
		if err := a.sync(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		a.stale = false
	}
	if err := a.c.send(ctx, nil, request{Execute: cmd, Arguments: args}); err != nil {
		a.stale = true
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	a.bound(data)
	defer a.bound(DataLimit)
	line, cuts, err := a.c.line(ctx)
	if err != nil {
		a.stale = true
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	var msg message
	if err := json.Unmarshal(line, &msg); err != nil {
		return nil, fmt.Errorf("%s: unreadable reply %q: %w", cmd, truncate(line), err)
	}
	return cuts, decodeReturn(cmd, msg, out)
}

// ExecStatus is the state of a command started with Exec.
type ExecStatus struct {
	// Exited says whether it ended; the agent reports an ended command
	// once, then forgets it.
	Exited bool `json:"exited"`
	// ExitCode is its exit status, when it exited normally.
	ExitCode *int `json:"exitcode"`
	// Signal is the signal that killed it, if one did.
	Signal *int `json:"signal"`
	// OutData and ErrData are its output, base64.
	OutData string `json:"out-data"`
	ErrData string `json:"err-data"`
	// OutTruncated and ErrTruncated say that only part of it came: the
	// agent kept only part of it, or the reply was cut to the bound
	// ExecStatus was given.
	OutTruncated bool `json:"out-truncated"`
	ErrTruncated bool `json:"err-truncated"`
}

// Exec starts path with args in the guest, capturing its output, and
// returns its guest process id.
func (a *Agent) Exec(ctx context.Context, path string, args []string) (int, error) {
	var r struct {
		PID int `json:"pid"`
	}
	if args == nil {
		args = []string{}
	}
	err := a.Execute(ctx, "guest-exec", map[string]any{"path": path, "arg": args, "capture-output": true}, &r)
	return r.PID, err
}

// ExecStatus asks about a command started with Exec, taking at most max
// bytes of each of its stdout and stderr (a little more: whole base64
// groups); what was cut is said by OutTruncated and ErrTruncated.
func (a *Agent) ExecStatus(ctx context.Context, pid, max int) (ExecStatus, error) {
	var st ExecStatus
	cuts, err := a.execute(ctx, "guest-exec-status", map[string]int{"pid": pid}, &st, max)
	st.OutTruncated = st.OutTruncated || slices.Contains(cuts, "out-data")
	st.ErrTruncated = st.ErrTruncated || slices.Contains(cuts, "err-data")
	return st, err
}

// FileOpen opens a guest file with an fopen mode ("r", "w") and returns
// its handle.
func (a *Agent) FileOpen(ctx context.Context, path, mode string) (int64, error) {
	var h int64
	err := a.Execute(ctx, "guest-file-open", map[string]string{"path": path, "mode": mode}, &h)
	return h, err
}

// FileWrite writes data at the handle's position.
func (a *Agent) FileWrite(ctx context.Context, h int64, data []byte) error {
	var r struct {
		Count int `json:"count"`
	}
	err := a.Execute(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(data)}, &r)
	if err == nil && r.Count != len(data) {
		err = fmt.Errorf("guest-file-write: wrote %d of %d bytes", r.Count, len(data))
	}
	return err
}

// FileRead reads at most count bytes and reports whether the end of the
// file was reached.
func (a *Agent) FileRead(ctx context.Context, h int64, count int) ([]byte, bool, error) {
	var r struct {
		Count int    `json:"count"`
		Buf   string `json:"buf-b64"`
		EOF   bool   `json:"eof"`
	}
	cuts, err := a.execute(ctx, "guest-file-read", map[string]any{"handle": h, "count": count}, &r, count)
	if err != nil {
		return nil, false, err
	}
	data, err := base64.StdEncoding.DecodeString(r.Buf)
	if err != nil {
		return nil, false, fmt.Errorf("guest-file-read: %w", err)
	}
	if len(cuts) > 0 || len(data) > count {
		return nil, false, fmt.Errorf("guest-file-read: the agent returned more than the %d bytes asked", count)
	}
	return data, r.EOF, nil
}

// FileClose closes a handle.
func (a *Agent) FileClose(ctx context.Context, h int64) error {
	return a.Execute(ctx, "guest-file-close", map[string]int64{"handle": h}, nil)
}

// Resync synchronises again after a call was cut short, so that its late
// reply is not taken for the next call's.
func (a *Agent) Resync(ctx context.Context) error {
	if err := a.sync(ctx); err != nil {
		return err
	}
	a.stale = false
	return nil
}
