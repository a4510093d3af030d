// Package qemu is the sandbox driver for QEMU: VMs are QEMU processes it
// launches and talks to over QMP, their snapshots are the internal
// snapshots of each VM's qcow2 image, and guest operations go through the
// QEMU guest agent (qemu-ga) in the guest. It is written against the
// public SDK only, as a third-party driver would be. docs/qemu.md covers
// setup, settings and the test guest.
//
// How the contract maps onto QEMU:
//   - A VM is running while a QEMU process holds the lock on its pid file;
//     its state is QMP's query-status. Without a process it is off, saved
//     (its current snapshot holds a running guest the next start resumes
//     with -loadvm) or aborted (the process was killed).
//   - The lock is held while a QEMU process lives for the VM, or while
//     any process holds QEMU's locks on its disk image. QMP serves one
//     client at a time: an operation that finds the monitor held by
//     another client past timeouts.monitor answers locked.
//   - Stops: system_powerdown (ACPI), quit (power-off; system_reset for a
//     VM that preserves its process), SIGKILL (emergency).
//   - Restore: qemu-img snapshot -a, then the next start resumes the
//     snapshot with -loadvm if it holds a running guest.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qcow2"
	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qmp"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Version is the driver's own version, reported in Info.
const Version = "0.1.0"

// capabilities: everything the contract has. Guest operations need the
// agent in the guest; a VM without it answers invalid state.
var capabilities = hypervisor.NewCapabilities(
	hypervisor.CapList, hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapStopEmergency,
	hypervisor.CapUnlock, hypervisor.CapRestore, hypervisor.CapCleanup, hypervisor.CapLockState,
	hypervisor.CapWatch, hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec, hypervisor.CapGuestCopyOut,
)

// Driver drives QEMU VMs. It is safe for concurrent use: operations that
// change a VM take its lock in this process; VMs outlive the process, so
// everything it knows about a VM it reads from the VM's files and QEMU.
type Driver struct {
	hypervisor.Unimplemented

	log  hclog.Logger
	cfg  *settings
	info hypervisor.Info

	locks  wait.Keyed[string] // per VM: held by operations that change it
	agents wait.Keyed[string] // per VM: held by guest operations
	// qmp, per VM, is held by whoever of this plugin talks to the VM's QMP
	// socket: QEMU serves one client at a time and queues the others in
	// silence, so without a turn of their own the core's status polls
	// could keep an operation waiting behind them until it gave up.
	qmp wait.Keyed[string]

	mu       sync.Mutex
	stopping map[string]int  // VM -> QEMU pid told to quit or killed, until it is gone
	restores map[string]bool // VMs whose disk qemu-img is reverting
}

// New is the plugin's factory.
func New(cfg sdk.Config, log hclog.Logger) (hypervisor.Driver, error) {
	if err := supported(); err != nil {
		return nil, err
	}
	s, err := load(cfg)
	if err != nil {
		return nil, err
	}
	d := &Driver{log: log, cfg: s, stopping: map[string]int{}, restores: map[string]bool{}}
	d.info = hypervisor.Info{Name: "qemu", Version: Version, ContractVersion: hypervisor.ContractVersion,
		Hypervisor: probeVersion(s.QEMU), Capabilities: capabilities}
	if err := os.MkdirAll(s.StateDir, 0o755); err != nil {
		return nil, cfg.Errorf([]string{"state_dir"}, "%v", err)
	}
	log.Info("QEMU driver ready", "qemu", d.info.Hypervisor, "state_dir", s.StateDir, "vms", len(s.vms))
	return d, nil
}

// probeVersion asks the emulator for its version line once.
func probeVersion(qemu string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemu, "-version").Output()
	if err != nil {
		return fmt.Sprintf("%s: not usable: %v", qemu, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// Info describes the driver (§1.1).
func (d *Driver) Info(context.Context) (hypervisor.Info, error) { return d.info, nil }

// ListVMs lists the configured VMs by name, with their power states
// (§2.1).
func (d *Driver) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if err := hypervisor.FromContext(ctx, hypervisor.OpList, ""); err != nil {
		return nil, err
	}
	var out []hypervisor.VM
	for _, name := range slices.Sorted(maps.Keys(d.cfg.vms)) {
		st, _ := d.observe(ctx, d.cfg.vms[name])
		out = append(out, hypervisor.VM{Name: name, Power: st.Power})
	}
	return out, nil
}

// vmOf returns the configured VM, or the not-found answer every operation
// gives for another name (§11.3).
func (d *Driver) vmOf(ctx context.Context, op, name string) (*vm, error) {
	if err := hypervisor.FromContext(ctx, op, name); err != nil {
		return nil, err
	}
	v, ok := d.cfg.vms[name]
	if !ok {
		return nil, hypervisor.NewError(hypervisor.CodeNotFound, op, name,
			"no VM named %q in the QEMU driver's configuration (its [vms.NAME] tables)", name)
	}
	return v, nil
}

// begin starts an operation that changes a VM: it waits, within ctx, for
// other such operations of this process on the VM to end.
func (d *Driver) begin(ctx context.Context, op, name string) (*vm, func(), error) {
	v, err := d.vmOf(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	release, err := d.acquire(ctx, &d.locks, op, name)
	if err != nil {
		return nil, nil, err
	}
	return v, release, nil
}

// acquire takes name's lock of the set, within ctx.
func (d *Driver) acquire(ctx context.Context, set *wait.Keyed[string], op, name string) (func(), error) {
	release, err := set.Lock(ctx, name)
	if err != nil {
		return nil, hypervisor.FromContext(ctx, op, name)
	}
	return release, nil
}

// record is what the driver keeps in a VM's directory between runs: the
// snapshot the VM is at and whether it has run since it was restored.
type record struct {
	// Snapshot is the snapshot the disk was last reverted to.
	Snapshot string `json:"snapshot"`
	// Clean says the VM has not run since; its next start resumes the
	// snapshot if it holds a running guest.
	Clean bool `json:"clean"`
	// PID is the QEMU process whose launch completed (it answered on its
	// monitor): the same process without a monitor is exiting, where one
	// not recorded yet is still being set up, perhaps by another plugin
	// process.
	PID int `json:"pid,omitempty"`
}

// loadRecord reads v's record. A VM the driver never restored is at its
// configured snapshot, untouched.
func loadRecord(v *vm) record {
	data, err := os.ReadFile(v.path(fileRecord))
	var r record
	if err != nil || json.Unmarshal(data, &r) != nil {
		return record{Snapshot: v.Snapshot, Clean: true}
	}
	return r
}

// saveRecord replaces v's record atomically.
func saveRecord(v *vm, r record) error {
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return err
	}
	data, _ := json.Marshal(r)
	tmp := v.path(fileRecord + ".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, v.path(fileRecord))
}

// resumable reports the snapshot a start of a VM with record r resumes:
// its current snapshot if the VM is clean and the snapshot holds a
// running guest; "" for a boot.
func resumable(v *vm, r record) string {
	if !r.Clean || r.Snapshot == "" {
		return ""
	}
	snaps, err := qcow2.Snapshots(v.Disk)
	if err != nil {
		return ""
	}
	if s, ok := qcow2.Find(snaps, r.Snapshot); ok && s.VMStateSize > 0 {
		return r.Snapshot
	}
	return ""
}

// process is what observe found of a VM's QEMU process.
type process struct {
	pid     int    // 0: none
	run     string // QEMU's run state; "" when the monitor could not be asked
	monitor error  // why not
}

// Status reports the VM's state (§3). It takes no lock of any kind: it
// probes the pid file's and the disk's locks without taking them, and
// asks QEMU's monitor, which it holds for a millisecond.
func (d *Driver) Status(ctx context.Context, name string) (hypervisor.Status, error) {
	v, err := d.vmOf(ctx, hypervisor.OpStatus, name)
	if err != nil {
		return hypervisor.Status{}, err
	}
	st, _ := d.observe(ctx, v)
	if err := hypervisor.FromContext(ctx, hypervisor.OpStatus, name); err != nil {
		return hypervisor.Status{}, err
	}
	return st, nil
}

// observe reads a VM's state from its files and, while it has a process,
// from QEMU.
func (d *Driver) observe(ctx context.Context, v *vm) (hypervisor.Status, process) {
	rec := loadRecord(v)
	st := hypervisor.Status{VM: v.name, CurrentSnapshot: rec.Snapshot, Lock: hypervisor.LockUnlocked}
	var p process
	pid, stale, err := pidfileHolder(v.path(filePID))
	if err != nil {
		st.Power, st.Raw, st.Lock = hypervisor.PowerUnknown, err.Error(), hypervisor.LockLocked
		return st, p
	}
	d.mu.Lock()
	restoring := d.restores[v.name]
	if pid == 0 {
		delete(d.stopping, v.name)
	}
	stopping := pid != 0 && d.stopping[v.name] == pid
	d.mu.Unlock()
	if pid == 0 {
		held, err := diskLocked(v.Disk)
		if held || (err != nil && !errors.Is(err, os.ErrNotExist)) {
			st.Lock = hypervisor.LockLocked
		}
		switch {
		case errors.Is(err, os.ErrNotExist):
			st.Power, st.Raw = hypervisor.PowerOff, "no process; the disk "+v.Disk+" does not exist"
		case restoring:
			st.Power, st.Raw = hypervisor.PowerRestoring, "reverting the disk (qemu-img snapshot -a)"
		case stale:
			st.Power, st.Raw = hypervisor.PowerAborted, "process killed"
		case resumable(v, rec) != "":
			st.Power, st.Raw = hypervisor.PowerSaved, "no process; resumes snapshot "+rec.Snapshot
		default:
			st.Power, st.Raw = hypervisor.PowerOff, "no process"
		}
		return st, p
	}
	p.pid = pid
	st.Lock = hypervisor.LockLocked
	p.run, p.monitor = d.runState(ctx, v)
	switch {
	case p.run != "":
		st.Raw = p.run
		st.Power = powerOf(p.run)
	case errors.Is(p.monitor, qmp.ErrBusy):
		st.Power, st.Raw = hypervisor.PowerUnknown, "monitor held by another client"
	case stopping || rec.PID == pid:
		st.Power, st.Raw = hypervisor.PowerStopping, "exiting (monitor closed)"
	default:
		st.Power, st.Raw = hypervisor.PowerStarting, "no monitor yet"
	}
	if stopping && !st.Power.IsOff() {
		st.Power, st.Raw = hypervisor.PowerStopping, st.Raw+", exiting"
	}
	return st, p
}

// runState asks the VM's monitor for its run state, waiting at most
// timeouts.monitor for a monitor another client holds.
func (d *Driver) runState(ctx context.Context, v *vm) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Monitor)
	defer cancel()
	release, err := d.acquire(ctx, &d.qmp, hypervisor.OpStatus, v.name)
	if err != nil {
		return "", fmt.Errorf("%w: this plugin's own turn did not come (%w)", qmp.ErrBusy, err)
	}
	defer release()
	m, err := qmp.DialMonitor(ctx, v.path(fileQMP))
	if err != nil {
		return "", err
	}
	defer m.Close()
	st, err := m.QueryStatus(ctx)
	if err != nil {
		return "", err
	}
	return st.Status, nil
}

// powerOf maps QEMU's run states (QMP RunState) onto the contract's.
// States with no counterpart, such as a process waiting for an incoming
// migration, are unknown (§3.2).
func powerOf(run string) hypervisor.PowerState {
	switch run {
	case "running":
		return hypervisor.PowerRunning
	case "paused", "suspended", "debug", "restore-vm", "postmigrate":
		// restore-vm: a failed loadvm leaves the guest stopped in it
		// until cont or quit.
		return hypervisor.PowerPaused
	case "prelaunch":
		return hypervisor.PowerStarting
	case "shutdown":
		// The guest is off; the process stays (on_poweroff = "preserve").
		return hypervisor.PowerOff
	case "save-vm":
		return hypervisor.PowerSnapshotting
	case "finish-migrate":
		return hypervisor.PowerSaving
	case "internal-error", "io-error", "guest-panicked", "watchdog":
		return hypervisor.PowerStuck
	}
	return hypervisor.PowerUnknown
}

// monitor connects to v's QMP socket for an operation, waiting at most
// timeouts.monitor for another client to let go of it: then the VM is
// locked (§5.5).
func (d *Driver) monitor(ctx context.Context, op string, v *vm) (*monitor, error) {
	mctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Monitor)
	defer cancel()
	release, err := d.acquire(mctx, &d.qmp, op, v.name)
	if err != nil {
		if ctx.Err() != nil {
			return nil, hypervisor.FromContext(ctx, op, v.name)
		}
		return nil, &hypervisor.Error{Code: hypervisor.CodeLocked, Op: op, VM: v.name,
			Message: fmt.Sprintf("another operation of this plugin kept the VM's QMP socket for %s", d.cfg.Timeouts.Monitor), Err: err}
	}
	m, err := qmp.DialMonitor(mctx, v.path(fileQMP))
	if err == nil {
		return &monitor{Monitor: m, release: release}, nil
	}
	release()
	switch {
	case ctx.Err() != nil:
		return nil, hypervisor.FromContext(ctx, op, v.name)
	case errors.Is(err, qmp.ErrBusy), errors.Is(err, context.DeadlineExceeded):
		return nil, &hypervisor.Error{Code: hypervisor.CodeLocked, Op: op, VM: v.name,
			Message: fmt.Sprintf("another client holds the VM's QMP socket (QEMU serves one at a time; waited %s)", d.cfg.Timeouts.Monitor), Err: err}
	}
	return nil, &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: v.name, Message: "cannot reach the VM's QMP socket", Err: err}
}

// monitor is a connection to a VM's QMP socket during this plugin's turn;
// Close ends both.
type monitor struct {
	*qmp.Monitor
	release func()
	once    sync.Once
}

// Close closes the connection and passes the turn on; closing twice is
// harmless.
func (m *monitor) Close() error {
	var err error
	m.once.Do(func() {
		err = m.Monitor.Close()
		m.release()
	})
	return err
}

// fail turns an error of a QEMU command into a contract error: the
// caller's deadline is timeout, the rest is failed with QEMU's words.
func fail(ctx context.Context, op string, v *vm, what string, err error) error {
	if cerr := hypervisor.FromContext(ctx, op, v.name); cerr != nil {
		return cerr
	}
	return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: v.name, Message: what + ": " + err.Error(), Err: err}
}

// Close is called by the SDK before the plugin exits. VMs are left
// running: they belong to the operator, not to the plugin process.
func (d *Driver) Close() error { return nil }

// describeHolders names the processes holding v's disk, for messages.
func describeHolders(v *vm) string {
	hs := holders(v.Disk)
	if len(hs) == 0 {
		return "a process this plugin cannot see"
	}
	names := make([]string, len(hs))
	for i, h := range hs {
		names[i] = h.String()
	}
	return strings.Join(names, ", ")
}

// removeStale removes what a QEMU that was killed leaves behind.
func removeStale(v *vm) {
	for _, f := range []string{filePID, fileQMP, fileAgent} {
		_ = os.Remove(v.path(f))
	}
}
