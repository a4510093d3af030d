package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Monitor is a QMP session with a VM's monitor socket, capabilities
// negotiated. It is not safe for concurrent use; QEMU serves one client at
// a time anyway.
type Monitor struct {
	c      *conn
	nextID int
	// events received while waiting for replies, oldest first, at most
	// maxEvents of them.
	events []Event
}

const maxEvents = 64

// monitorString is the most characters a QMP reply keeps in a string: the
// replies the plugin reads are short, and QEMU's own; the bound is for a
// QEMU a guest took over.
const monitorString = 1 << 20

// Event is an asynchronous QMP event, e.g. SHUTDOWN.
type Event struct {
	// Name is the event's name, e.g. "SHUTDOWN", "POWERDOWN", "STOP".
	Name string
	// Data is its data member, raw.
	Data json.RawMessage
}

// Status is the reply to query-status.
type Status struct {
	// Status is QEMU's run state, e.g. "running", "paused", "shutdown".
	Status string `json:"status"`
	// Running says whether the guest's CPUs run.
	Running bool `json:"running"`
}

// DialMonitor connects to the QMP socket at path, reads QEMU's greeting and
// leaves capabilities negotiation mode. A socket held by another client
// gives no greeting: that is ErrBusy once ctx ends. Bound ctx tightly
// when a busy socket should be reported quickly.
func DialMonitor(ctx context.Context, path string) (*Monitor, error) {
	c, err := dial(ctx, path)
	if err != nil {
		return nil, err
	}
	m := &Monitor{c: c}
	c.limit(monitorString, frameFor(monitorString))
	line, _, err := c.line(ctx)
	if err != nil {
		c.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("%s: no greeting: %w", path, ErrBusy)
		}
		return nil, err
	}
	var g message
	if err := json.Unmarshal(line, &g); err != nil || g.Greeting == nil {
		c.Close()
		return nil, fmt.Errorf("%s: not a QMP greeting: %q", path, truncate(line))
	}
	if err := m.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return m, nil
}

// Close ends the session, freeing the socket for the next client.
func (m *Monitor) Close() error { return m.c.Close() }

// Execute runs cmd with args (nil for none) and decodes its return value
// into out (nil to ignore it). An error reply is an *Error. Events that
// arrive meanwhile are kept for Events and WaitEvent.
func (m *Monitor) Execute(ctx context.Context, cmd string, args, out any) error {
	m.nextID++
	id := fmt.Sprintf("sandbox-%d", m.nextID)
	if err := m.c.send(ctx, nil, request{Execute: cmd, Arguments: args, ID: id}); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	for {
		msg, err := m.read(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if msg.Event != "" {
			continue
		}
		if string(msg.ID) != `"`+id+`"` {
			continue // a reply to a command of an earlier, abandoned call
		}
		return decodeReturn(cmd, msg, out)
	}
}

// read returns the next message, keeping events.
func (m *Monitor) read(ctx context.Context) (message, error) {
	line, _, err := m.c.line(ctx)
	if err != nil {
		return message{}, err
	}
	var msg message
	if err := json.Unmarshal(line, &msg); err != nil {
		return message{}, fmt.Errorf("unreadable QMP message %q: %w", truncate(line), err)
	}
	if msg.Event != "" {
		if len(m.events) == maxEvents {
			m.events = m.events[1:]
		}
		m.events = append(m.events, Event{Name: msg.Event, Data: msg.Data})
	}
	return msg, nil
}

// WaitEvent returns the first event named name, among those already
// received or arriving before ctx ends, and forgets the events before it.
func (m *Monitor) WaitEvent(ctx context.Context, name string) (Event, error) {
	for {
		for i, e := range m.events {
			if e.Name == name {
				m.events = m.events[i+1:]
				return e, nil
			}
		}
		m.events = m.events[:0]
		if _, err := m.read(ctx); err != nil && !errors.Is(err, ErrFrameTooLong) {
			return Event{}, fmt.Errorf("waiting for event %s: %w", name, err)
		}
	}
}

// QueryStatus returns the VM's run state.
func (m *Monitor) QueryStatus(ctx context.Context) (Status, error) {
	var st Status
	err := m.Execute(ctx, "query-status", nil, &st)
	return st, err
}

// HumanCommand runs a human monitor (HMP) command line, such as "savevm
// NAME", and returns its output. HMP reports failures as text in a
// successful reply; a reply starting with "Error:" comes back as an *Error
// of class "HMPError" with that text.
func (m *Monitor) HumanCommand(ctx context.Context, line string) (string, error) {
	var out string
	if err := m.Execute(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out); err != nil {
		return "", err
	}
	out = strings.TrimRight(out, "\r\n")
	if strings.HasPrefix(out, "Error:") {
		return out, &Error{Class: "HMPError", Desc: strings.TrimSpace(strings.TrimPrefix(out, "Error:"))}
	}
	return out, nil
}
