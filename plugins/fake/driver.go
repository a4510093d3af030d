package fake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/gofrs/flock"
	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Version is the fake driver's own version, reported in Info.
const Version = "0.1.0"

// Driver is the fake hypervisor and its driver in one: a world of simulated
// VMs behind the hypervisor.Driver contract. It is safe for concurrent use.
type Driver struct {
	caps     hypervisor.Capabilities
	logger   hclog.Logger
	journal  *journal
	stateDir string
	scratch  string
	// ownScratch: the scratch directory is the driver's own temporary one,
	// removed by Close.
	ownScratch bool
	// exit ends the process for exit_during faults; tests replace it to
	// observe the exit instead of dying.
	exit func(code int)

	// violations are the contract rules this driver breaks on purpose.
	violations map[Violation]bool
	viol       violationState

	// mu guards the world; lock and unlock take it together with the
	// world file's lock when the world is shared through state_dir.
	mu     sync.Mutex
	shared *sharedWorld
	vms    map[string]*vm
	// changed is closed and replaced on every change an operation makes,
	// waking whoever waits for a state (Watch, Unlock, Restore, Cleanup).
	changed chan struct{}

	closed    chan struct{}
	closeOnce sync.Once
}

var _ hypervisor.Driver = (*Driver)(nil)

// New is the plugin's sdk.Factory: it decodes and validates the fake's
// table, reporting mistakes with the file, line and key, and opens the
// world (loading it from state_dir if one was saved there).
func New(cfg sdk.Config, logger hclog.Logger) (hypervisor.Driver, error) {
	c := DefaultConfig()
	if err := cfg.Decode(&c); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, cfg.Errorf(err.key, "%s", err.msg)
	}
	c.Journal = cfg.Path(c.Journal)
	c.StateDir = cfg.Path(c.StateDir)
	c.ScratchDir = cfg.Path(c.ScratchDir)
	d, err := open(c, logger)
	if err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			return nil, cfg.Errorf(ce.key, "%s", ce.msg)
		}
		return nil, err
	}
	return d, nil
}

// NewDriver opens a fake world from a Config built in Go, for tests that
// drive the fake in-process. Start from DefaultConfig. A nil logger
// discards the driver's log.
func NewDriver(c Config, logger hclog.Logger) (*Driver, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	return open(c, logger)
}

func open(c Config, logger hclog.Logger) (*Driver, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	d := &Driver{
		// AllCapabilities is in display order; a Capabilities value is a
		// sorted set, and Info reports one.
		caps:     hypervisor.NewCapabilities(hypervisor.AllCapabilities...),
		logger:   logger,
		stateDir: c.StateDir,
		scratch:  c.ScratchDir,
		exit:     os.Exit,
		vms:      map[string]*vm{},
		changed:  make(chan struct{}),
		closed:   make(chan struct{}),
	}
	if c.Capabilities != nil {
		d.caps = hypervisor.NewCapabilities(c.Capabilities...)
	}
	d.violations = map[Violation]bool{}
	for _, v := range c.Violations {
		d.violations[v] = true
	}
	if len(c.Violations) > 0 {
		logger.Warn("this fake breaks the contract on purpose", "violations", c.Violations)
	}
	now := time.Now()
	for name, vc := range c.VMs {
		d.vms[name] = newVM(name, vc, c.Timing, now)
	}
	if d.stateDir != "" {
		if err := os.MkdirAll(d.stateDir, 0o755); err != nil {
			return nil, keyErr(fmt.Sprintf("cannot create: %v", err), "state_dir")
		}
		saved, err := loadWorld(d.stateDir)
		if err != nil {
			return nil, keyErr(err.Error(), "state_dir")
		}
		for name, st := range saved {
			if v, ok := d.vms[name]; ok {
				v.restoreState(st)
			}
		}
		d.shared = &sharedWorld{lock: flock.New(filepath.Join(d.stateDir, worldLock))}
		if d.scratch == "" {
			d.scratch = filepath.Join(d.stateDir, "guests")
		}
	}
	if d.scratch == "" {
		dir, err := os.MkdirTemp("", "sandbox-fake-guests-")
		if err != nil {
			return nil, fmt.Errorf("fake: scratch directory: %w", err)
		}
		d.scratch, d.ownScratch = dir, true
	}
	if c.Journal != "" {
		j, err := openJournal(c.Journal)
		if err != nil {
			d.removeScratch()
			return nil, keyErr(fmt.Sprintf("cannot open: %v", err), "journal")
		}
		d.journal = j
	} else {
		d.journal = &journal{}
	}
	d.lock()
	d.saveLocked()
	d.unlock()
	return d, nil
}

// Close ends every Watch, closes the journal and removes the driver's own
// scratch directory. The simulated VMs stay as they are in state_dir.
func (d *Driver) Close() error {
	var err error
	d.closeOnce.Do(func() {
		close(d.closed)
		err = d.journal.close()
		d.removeScratch()
	})
	return err
}

func (d *Driver) removeScratch() {
	if d.ownScratch {
		if err := os.RemoveAll(d.scratch); err != nil {
			d.logger.Warn("cannot remove scratch directory", "dir", d.scratch, "error", err)
		}
	}
}

// Info describes the fake; it never fails.
func (d *Driver) Info(ctx context.Context) (hypervisor.Info, error) {
	if err := hypervisor.FromContext(ctx, hypervisor.OpInfo, ""); err != nil {
		return hypervisor.Info{}, err
	}
	return d.infoOf(hypervisor.Info{
		Name:            "fake",
		Version:         Version,
		ContractVersion: hypervisor.ContractVersion,
		Hypervisor:      "sandbox fake hypervisor " + Version,
		Capabilities:    slices.Clone(d.caps),
	}), nil
}

// ListVMs lists the world's VMs by name. Like VirtualBox's "list vms" it
// takes no lock, and since the fake knows every state it reports it.
func (d *Driver) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if !d.caps.Has(hypervisor.CapList) {
		return nil, hypervisor.Unsupported(hypervisor.OpList, "")
	}
	if err := hypervisor.FromContext(ctx, hypervisor.OpList, ""); err != nil {
		return nil, err
	}
	d.lock()
	now := time.Now()
	out := make([]hypervisor.VM, 0, len(d.vms))
	names := make([]string, 0, len(d.vms))
	for _, v := range d.vms {
		v.peek(now)
		out = append(out, hypervisor.VM{Name: v.name, ID: v.id, Power: v.st.Power})
		names = append(names, v.name)
	}
	d.unlock()
	d.holdSession(ViolationListLocks, names...)
	slices.SortFunc(out, func(a, b hypervisor.VM) int { return cmp.Compare(a.Name, b.Name) })
	return d.listed(out), nil
}

// Journal returns what this driver has journaled so far, for in-process
// tests that configure no journal file.
func (d *Driver) Journal() []Entry {
	return d.journal.entries()
}

// begin is how every VM operation starts: the context must be live, the VM
// must exist, and a slow VM makes the caller wait first.
func (d *Driver) begin(ctx context.Context, op, name string) (*vm, error) {
	d.deaf(ctx)
	if err := hypervisor.FromContext(ctx, op, name); err != nil {
		return nil, err
	}
	d.lock()
	v, ok := d.vms[name]
	var slow time.Duration
	if ok {
		slow = v.faults.Slow
	}
	d.unlock()
	if !ok {
		return nil, d.missingVM(op, name)
	}
	if slow > 0 {
		if err := sleep(ctx, slow); err != nil {
			return nil, hypervisor.FromContext(ctx, op, name)
		}
	}
	return v, nil
}

// commitLocked publishes a change: it saves the world and wakes everyone
// waiting for a state.
func (d *Driver) commitLocked() {
	d.saveLocked()
	close(d.changed)
	d.changed = make(chan struct{})
}

// exitDuringLocked fires an exit_during fault for the first of ops the VM
// lists and has not fired yet: it records that it fired (so a relaunch
// with state_dir does not repeat it), journals the call as "exit" and ends
// the process. If exit returns (in tests), the caller answers with the
// error the host would see from a dead plugin.
func (d *Driver) exitDuringLocked(v *vm, c *call, ops ...string) error {
	for _, op := range ops {
		if !slices.Contains(v.faults.ExitDuring, op) || slices.Contains(v.st.Exited, op) {
			continue
		}
		v.st.Exited = append(v.st.Exited, op)
		d.commitLocked()
		opName := op
		if c != nil {
			opName = c.e.Op
			c.finish(exitOutcome, nil)
		}
		d.logger.Warn("exiting as scripted by exit_during", "vm", v.name, "op", op)
		d.exit(exitFaultStatus)
		return hypervisor.NewError(hypervisor.CodeUnavailable, opName, v.name,
			"plugin process exited during %s (exit_during fault)", op)
	}
	return nil
}

// waitFor waits until cond holds, re-checking it after every change to the
// world and whenever the VM's next transition falls due. cond runs with
// d.mu held and the VM advanced to now; an error from it ends the wait.
func (d *Driver) waitFor(ctx context.Context, op string, v *vm, cond func(now time.Time) (bool, error)) error {
	ctx, stop := d.untilClosed(ctx)
	defer stop()
	var condErr error
	err := wait.On(ctx, func(context.Context) (bool, wait.Next, error) {
		d.lock()
		defer d.unlock()
		now := time.Now()
		v.advance(now)
		done, err := cond(now)
		condErr = err
		return done, d.next(v, now), err
	})
	switch {
	case err == nil || condErr != nil:
		return err
	case d.isClosed():
		return hypervisor.NewError(hypervisor.CodeUnavailable, op, v.name, "driver closed")
	}
	return hypervisor.FromContext(ctx, op, v.name)
}

// next is when a wait on v should look again: at the next change to the
// world, when v's next transition falls due, and every sharedPoll when
// another process may be the one changing it. d.mu is held.
func (d *Driver) next(v *vm, now time.Time) wait.Next {
	n := wait.Next{Wake: d.changed, At: v.nextEvent(now)}
	if d.shared != nil && (n.At.IsZero() || n.At.After(now.Add(sharedPoll))) {
		n.At = now.Add(sharedPoll)
	}
	return n
}

// untilClosed is ctx, ended also when the driver closes.
func (d *Driver) untilClosed(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-d.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// sleep waits d or until ctx ends, for the simulated duration of work the
// hypervisor does (never in place of a state check).
func sleep(ctx context.Context, d time.Duration) error { return wait.Sleep(ctx, d) }

// Inject makes a VM misbehave from now on, on top of its configured
// faults, as a hypervisor that starts failing in the middle of a task: a
// counted fault fails that many more calls. With state_dir the faults are
// part of the world, so every plugin process sharing it obeys them; a test
// opens a driver of its own on the world to inject them into the plugin
// under test. Violations of the fault table's rules are refused.
func (d *Driver) Inject(name string, f Faults) error {
	if err := f.validate("faults"); err != nil {
		return err
	}
	d.lock()
	defer d.unlock()
	v, ok := d.vms[name]
	if !ok {
		return hypervisor.NewError(hypervisor.CodeNotFound, "inject", name, "Could not find a registered machine named '%s'", name)
	}
	sum := f
	if v.st.Injected != nil {
		sum = v.st.Injected.plus(f)
	}
	v.st.Injected = &sum
	v.refreshFaults()
	d.commitLocked()
	return nil
}

// Heal takes back every fault injected into a VM: the hypervisor recovers.
// The configured faults stay.
func (d *Driver) Heal(name string) error {
	d.lock()
	defer d.unlock()
	v, ok := d.vms[name]
	if !ok {
		return hypervisor.NewError(hypervisor.CodeNotFound, "heal", name, "Could not find a registered machine named '%s'", name)
	}
	v.st.Injected = nil
	v.refreshFaults()
	d.commitLocked()
	return nil
}
