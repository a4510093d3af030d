package fake

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Entry is one line of the journal: an operation that reached the
// simulated hypervisor. Reads (info, list, status, watch) are not
// journaled, since callers poll them; neither are the calls the contract
// makes no-ops that send nothing (stop of an off-like VM, start of a
// running one, unlock of an unlocked one), which is exactly what tests
// assert by their absence.
type Entry struct {
	// Time is when the call reached the hypervisor.
	Time time.Time `json:"time"`
	// Op is the operation, as in hypervisor.Error.Op ("stop", "restore", ...).
	Op string `json:"op"`
	// VM is the VM's name.
	VM string `json:"vm"`
	// Method is the stop method of a stop.
	Method hypervisor.StopMethod `json:"method,omitempty"`
	// Snapshot is the snapshot a restore went to, resolved when the caller
	// asked for the current one.
	Snapshot string `json:"snapshot,omitempty"`
	// Path is the guest path of a copy.
	Path string `json:"path,omitempty"`
	// Command is the program and arguments of an exec.
	Command []string `json:"command,omitempty"`
	// Via is "cleanup" for the commands a native cleanup sent.
	Via string `json:"via,omitempty"`
	// Actions are what a cleanup did.
	Actions []string `json:"actions,omitempty"`
	// Outcome is "ok", the error code's name (e.g. "locked") or "exit"
	// when an exit_during fault ended the process during the call.
	Outcome string `json:"outcome"`
	// Error is the error's text when Outcome is not "ok".
	Error string `json:"error,omitempty"`
}

const (
	okOutcome   = "ok"
	exitOutcome = "exit"
)

// ReadJournal reads a journal file written by the fake.
func ReadJournal(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// journal keeps the entries in memory and appends them to the journal
// file, if there is one, one write per line so that concurrent writers and
// a reader never see half a line.
type journal struct {
	mu   sync.Mutex
	file *os.File
	list []Entry
}

func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &journal{file: f}, nil
}

func (j *journal) write(e Entry) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.list = append(j.list, e)
	if j.file == nil {
		return nil
	}
	_, err = j.file.Write(append(line, '\n'))
	return err
}

func (j *journal) entries() []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Entry(nil), j.list...)
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.file == nil {
		return nil
	}
	err := j.file.Close()
	j.file = nil
	return err
}

// call is one operation that reached the hypervisor, journaled once when
// it finishes.
type call struct {
	d    *Driver
	e    Entry
	once sync.Once
}

func (d *Driver) newCall(op, vm string) *call {
	return &call{d: d, e: Entry{Time: time.Now().UTC(), Op: op, VM: vm}}
}

// done journals the call with err's outcome and returns err.
func (c *call) done(err error) error {
	outcome := okOutcome
	if err != nil {
		outcome = hypervisor.CodeOf(err).String()
	}
	c.finish(outcome, err)
	return err
}

func (c *call) finish(outcome string, err error) {
	c.once.Do(func() {
		c.e.Outcome = outcome
		if err != nil {
			c.e.Error = err.Error()
		}
		c.d.logger.Debug("operation", "op", c.e.Op, "vm", c.e.VM, "method", c.e.Method,
			"snapshot", c.e.Snapshot, "outcome", outcome, "error", c.e.Error)
		if werr := c.d.journal.write(c.e); werr != nil {
			c.d.logger.Error("cannot write the journal", "error", werr)
		}
	})
}
