package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// Version is the driver's own version, reported in Info.
const Version = "0.1.0"

// capabilities is what this driver can do beyond status and start. It
// cannot report or release session locks (a process has none), has no
// native cleanup and no watch: the operations behind those answer
// unsupported, courtesy of hypervisor.Unimplemented, and sandbox's core
// composes cleanups from stop and restore (contract §8.3).
var capabilities = hypervisor.NewCapabilities(
	hypervisor.CapList,
	hypervisor.CapStopACPI,     // SIGTERM: the process may ignore it, as a guest may ignore the power button
	hypervisor.CapStopPowerOff, // SIGKILL
	hypervisor.CapRestore,
	hypervisor.CapGuestCopyIn,
	hypervisor.CapGuestExec,
	hypervisor.CapGuestCopyOut,
)

// Driver drives VMs that are local processes. It is safe for concurrent
// use: each VM's lock guards its files, so that a start and a restore of
// the same VM cannot interleave, while operations on different VMs run in
// parallel (§13.1a).
type Driver struct {
	hypervisor.Unimplemented

	log   hclog.Logger
	dir   string
	vms   map[string]VMConfig
	locks map[string]*vmLock // one per VM, made in New and never changed
}

// vmLock is a VM's lock and what it guards besides the VM's files.
type vmLock struct {
	sync.Mutex
	// killed is the process the VM was sent SIGKILL to. The kernel takes a
	// moment to act on it, during which /proc still says running; the
	// contract wants stopping right after a power-off returns (§5.1a).
	killed int
}

// New is the plugin's factory: sdk.Serve calls it with the driver's table
// of sandbox's configuration once sandbox has launched the plugin.
func New(cfg sdk.Config, log hclog.Logger) (hypervisor.Driver, error) {
	var c Config
	if err := cfg.Decode(&c); err != nil {
		return nil, err // already says file:line: key: what is wrong
	}
	if key, msg := c.check(); key != nil {
		return nil, cfg.Errorf(key, "%s", msg)
	}
	d := &Driver{log: log, dir: cfg.Path(c.StateDir), vms: map[string]VMConfig{}, locks: map[string]*vmLock{}}
	for name, vm := range c.VMs {
		resolved := map[string]string{}
		for snap, dir := range vm.Snapshots {
			resolved[snap] = cfg.Path(dir)
			if fi, err := os.Stat(resolved[snap]); err != nil || !fi.IsDir() {
				return nil, cfg.Errorf([]string{"vms", name, "snapshots", snap}, "%s is not a directory", resolved[snap])
			}
		}
		vm.Snapshots = resolved
		d.vms[name] = vm
		d.locks[name] = &vmLock{}
	}
	for _, name := range slices.Sorted(maps.Keys(d.vms)) {
		if err := d.create(name); err != nil {
			return nil, fmt.Errorf("procvm: VM %s: %w", name, err)
		}
	}
	log.Info("procvm driver ready", "state_dir", d.dir, "vms", len(d.vms))
	return d, nil
}

// create gives a VM seen for the first time its disk, from its first
// snapshot.
func (d *Driver) create(name string) error {
	if _, err := os.Stat(d.path(name, "disk")); err == nil {
		return nil
	}
	if err := os.MkdirAll(d.path(name), 0o755); err != nil {
		return err
	}
	first := slices.Sorted(maps.Keys(d.vms[name].Snapshots))[0]
	return d.restoreLocked(context.Background(), name, first)
}

// path is a file of the VM's directory in the state directory.
func (d *Driver) path(name string, file ...string) string {
	return filepath.Join(append([]string{d.dir, name}, file...)...)
}

// notFound is the answer for a VM the configuration does not have; the
// contract wants it from every operation that takes a VM (§11.3).
func notFound(op, name string) error {
	return hypervisor.NewError(hypervisor.CodeNotFound, op, name, "no VM named %q in the configuration", name)
}

// begin is how every VM operation starts: a call whose deadline already
// passed does nothing (§12.1), and the VM must exist.
func (d *Driver) begin(ctx context.Context, op, name string) error {
	if err := hypervisor.FromContext(ctx, op, name); err != nil {
		return err
	}
	if _, ok := d.vms[name]; !ok {
		return notFound(op, name)
	}
	return nil
}

// Info describes the driver (§1.1).
func (d *Driver) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{
		Name:            "procvm",
		Version:         Version,
		ContractVersion: hypervisor.ContractVersion,
		Hypervisor:      "local processes",
		Capabilities:    capabilities,
	}, nil
}

// ListVMs lists the configured VMs by name, with their states (§2.1).
func (d *Driver) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if err := hypervisor.FromContext(ctx, hypervisor.OpList, ""); err != nil {
		return nil, err
	}
	var out []hypervisor.VM
	for _, name := range slices.Sorted(maps.Keys(d.vms)) {
		d.locks[name].Lock()
		out = append(out, hypervisor.VM{Name: name, Power: d.statusLocked(name).Power})
		d.locks[name].Unlock()
	}
	return out, nil
}

// Status reports the VM's process as the kernel sees it (§3).
func (d *Driver) Status(ctx context.Context, name string) (hypervisor.Status, error) {
	if err := d.begin(ctx, hypervisor.OpStatus, name); err != nil {
		return hypervisor.Status{}, err
	}
	d.locks[name].Lock()
	defer d.locks[name].Unlock()
	return d.statusLocked(name), nil
}

func (d *Driver) statusLocked(name string) hypervisor.Status {
	st := hypervisor.Status{VM: name, Lock: hypervisor.LockUnknown, CurrentSnapshot: d.readFile(name, "snapshot")}
	pid := d.pid(name)
	if pid == 0 {
		d.locks[name].killed = 0
		st.Power, st.Raw = hypervisor.PowerOff, "no process"
		return st
	}
	raw, power, gone := processState(pid)
	if gone {
		// It exited while no driver was there to see it.
		os.Remove(d.path(name, "pid"))
		d.locks[name].killed = 0
		st.Power, st.Raw = hypervisor.PowerOff, "exited"
		return st
	}
	if d.locks[name].killed == pid {
		power, raw = hypervisor.PowerStopping, raw+", killed"
	}
	st.Power, st.Raw = power, raw
	return st
}

// pid is the VM's process id, 0 when it has none.
func (d *Driver) pid(name string) int {
	pid, err := strconv.Atoi(d.readFile(name, "pid"))
	if err != nil {
		return 0
	}
	return pid
}

func (d *Driver) readFile(name, file string) string {
	data, err := os.ReadFile(d.path(name, file))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// Start runs the VM's command in its directory (§4). The process gets a
// process group of its own, so that a stop reaches whatever it started
// and a Ctrl-C meant for sandbox does not.
func (d *Driver) Start(ctx context.Context, name string) error {
	if err := d.begin(ctx, hypervisor.OpStart, name); err != nil {
		return err
	}
	d.locks[name].Lock()
	defer d.locks[name].Unlock()
	switch st := d.statusLocked(name); st.Power {
	case hypervisor.PowerRunning:
		return nil // §4.2: already running, nothing to do
	case hypervisor.PowerStopping:
		// Transient: the process is on its way out. locked tells the core
		// to retry (§11.1).
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name, "the previous process is still exiting")
	case hypervisor.PowerOff:
	default:
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStart, name, "the process is %s", st.Raw)
	}
	vm := d.vms[name]
	cmd := exec.Command(vm.Command[0], vm.Command[1:]...)
	cmd.Dir = d.path(name, "disk")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, name, "%v", err)
	}
	pid := cmd.Process.Pid
	if err := os.WriteFile(d.path(name, "pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, name, "record the pid: %v", err)
	}
	d.log.Info("VM started", "vm", name, "pid", pid, "command", vm.Command)
	go d.reap(name, cmd)
	return nil
}

// reap waits for the process so that it does not linger as a zombie, and
// forgets it.
func (d *Driver) reap(name string, cmd *exec.Cmd) {
	err := cmd.Wait()
	d.locks[name].Lock()
	if d.pid(name) == cmd.Process.Pid {
		os.Remove(d.path(name, "pid"))
	}
	d.locks[name].Unlock()
	d.log.Info("VM process exited", "vm", name, "pid", cmd.Process.Pid, "status", fmt.Sprint(err))
}

// Stop signals the VM's process group: SIGTERM for the power button,
// SIGKILL for a power-off (§5). It returns once the signal is sent; the
// caller confirms by state.
func (d *Driver) Stop(ctx context.Context, name string, method hypervisor.StopMethod) error {
	sig, ok := map[hypervisor.StopMethod]syscall.Signal{
		hypervisor.StopACPI:     syscall.SIGTERM,
		hypervisor.StopPowerOff: syscall.SIGKILL,
	}[method]
	if !ok {
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpStop, name, "no stop method %q", method) // §5.4
	}
	if err := d.begin(ctx, hypervisor.OpStop, name); err != nil {
		return err
	}
	d.locks[name].Lock()
	defer d.locks[name].Unlock()
	st := d.statusLocked(name)
	switch {
	case st.Power.IsOff():
		return nil // §5.2: nothing to stop, nothing sent
	case method == hypervisor.StopACPI && st.Power == hypervisor.PowerPaused:
		// A stopped process cannot act on SIGTERM: the contract's "ACPI
		// while paused" (§5.5).
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStop, name, "the process is %s", st.Raw)
	}
	pid := d.pid(name)
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		err = syscall.Kill(pid, sig)
	}
	if err != nil && !errors.Is(err, syscall.ESRCH) { // ESRCH: it exited meanwhile
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, name, "signal %s to process %d: %v", sig, pid, err)
	}
	if sig == syscall.SIGKILL {
		d.locks[name].killed = pid
	}
	d.log.Info("VM signalled", "vm", name, "pid", pid, "signal", sig.String())
	return nil
}

// Restore copies the snapshot's directory over the VM's disk (§7). The VM
// must have no process.
func (d *Driver) Restore(ctx context.Context, name, snapshot string) error {
	if err := d.begin(ctx, hypervisor.OpRestore, name); err != nil {
		return err
	}
	d.locks[name].Lock()
	defer d.locks[name].Unlock()
	switch st := d.statusLocked(name); {
	case st.Power == hypervisor.PowerStopping:
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpRestore, name, "the process is still exiting")
	case !st.Power.IsOff():
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpRestore, name,
			"the VM's process is %s; stop it first", st.Raw)
	}
	if snapshot == "" {
		snapshot = d.readFile(name, "snapshot") // §7.1: empty means the current one
	}
	return d.restoreLocked(ctx, name, snapshot)
}

func (d *Driver) restoreLocked(ctx context.Context, name, snapshot string) error {
	src, ok := d.vms[name].Snapshots[snapshot]
	if !ok {
		return hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpRestore, name,
			"no snapshot %q; the VM has %s", snapshot, strings.Join(slices.Sorted(maps.Keys(d.vms[name].Snapshots)), ", "))
	}
	disk := d.path(name, "disk")
	next := disk + ".restoring"
	os.RemoveAll(next)
	if err := copyTree(ctx, src, next); err != nil {
		os.RemoveAll(next)
		if cerr := hypervisor.FromContext(ctx, hypervisor.OpRestore, name); cerr != nil {
			return cerr // the deadline passed mid-copy: nothing changed
		}
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpRestore, name, "copy %s: %v", src, err)
	}
	if err := os.RemoveAll(disk); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpRestore, name, "%v", err)
	}
	if err := os.Rename(next, disk); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpRestore, name, "%v", err)
	}
	if err := os.WriteFile(d.path(name, "snapshot"), []byte(snapshot), 0o644); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpRestore, name, "%v", err)
	}
	d.log.Info("VM restored", "vm", name, "snapshot", snapshot)
	return nil
}

// copyTree copies the directory src to dst, giving up when ctx ends.
func copyTree(ctx context.Context, src, dst string) error {
	return filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if e.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !e.Type().IsRegular() {
			return nil // a snapshot holds files and directories only
		}
		return copyFile(p, target)
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
