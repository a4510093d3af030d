package qemu

import (
	"context"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Stop stops the VM (§5): the power button (system_powerdown), a power-off
// (quit, or for a VM that preserves its process system_reset, which QEMU
// turns into a power-off because it runs with -no-reboot), or SIGKILL.
// A power-off returns once the process has exited or, for a preserved one,
// once QEMU reported the guest off; an emergency stop once the kernel has
// ended the process.
func (d *Driver) Stop(ctx context.Context, name string, method hypervisor.StopMethod) error {
	if !method.Valid() {
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpStop, name, "no stop method %q", method)
	}
	v, release, err := d.begin(ctx, hypervisor.OpStop, name)
	if err != nil {
		return err
	}
	defer release()
	st, p := d.observe(ctx, v)
	if p.pid == 0 {
		if method == hypervisor.StopEmergency && st.Lock == hypervisor.LockLocked {
			return d.killHolders(ctx, v) // §5.2: a VM process that still holds the disk
		}
		return nil // §5.2: nothing to stop
	}
	if st.Power.IsOff() {
		if method == hypervisor.StopEmergency {
			return d.killProcess(ctx, v, p.pid) // §5.2: the preserved process
		}
		return nil
	}
	switch method {
	case hypervisor.StopACPI:
		if st.Power != hypervisor.PowerRunning {
			// A paused guest cannot act on the button (§5.5).
			return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStop, name,
				"the VM is %s; the power button needs a running guest", st.Raw)
		}
		m, err := d.monitor(ctx, hypervisor.OpStop, v)
		if err != nil {
			return d.unlessExiting(ctx, v, err)
		}
		defer m.Close()
		if err := m.Execute(ctx, "system_powerdown", nil, nil); err != nil {
			return fail(ctx, hypervisor.OpStop, v, "system_powerdown", err)
		}
		d.log.Info("power button pressed", "vm", name)
		return nil
	case hypervisor.StopPowerOff:
		return d.powerOff(ctx, v, p.pid)
	default:
		return d.killProcess(ctx, v, p.pid)
	}
}

// powerOff cuts the guest's power through QMP and waits for the result.
func (d *Driver) powerOff(ctx context.Context, v *vm, pid int) error {
	m, err := d.monitor(ctx, hypervisor.OpStop, v)
	if err != nil {
		return d.unlessExiting(ctx, v, err)
	}
	defer m.Close()
	if v.OnPoweroff == onPoweroffPreserve {
		if err := m.Execute(ctx, "system_reset", nil, nil); err != nil {
			return fail(ctx, hypervisor.OpStop, v, "system_reset", err)
		}
		wctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Stop)
		defer cancel()
		if _, err := m.WaitEvent(wctx, "SHUTDOWN"); err != nil {
			return fail(ctx, hypervisor.OpStop, v, "waiting for QEMU's SHUTDOWN event after system_reset", err)
		}
		d.log.Info("VM powered off, process preserved", "vm", v.name, "pid", pid)
		return nil
	}
	d.markStopping(v, pid)
	if err := m.Execute(ctx, "quit", nil, nil); err != nil {
		// QEMU may close the socket before its reply arrives.
		d.log.Debug("quit", "vm", v.name, "error", err)
	}
	m.Close()
	if d.waitGone(ctx, v, d.cfg.Timeouts.Stop) {
		d.log.Info("VM powered off", "vm", v.name, "pid", pid)
		return nil
	}
	if ctx.Err() != nil {
		return nil // accepted; Status says stopping until the process is gone
	}
	d.log.Warn("QEMU did not exit after quit; killing it", "vm", v.name, "pid", pid, "waited", d.cfg.Timeouts.Stop)
	return d.killProcess(ctx, v, pid)
}

// unlessExiting answers a stop whose QMP socket could not be reached: a
// QEMU on its way out after the guest shut down (a stop ladder's power-off
// sent while the ACPI shutdown it follows completes) closes its socket
// before its process is gone, and then there is nothing left to stop
// (§5.2, §5.5). Any other failure, or a process still there after
// timeouts.stop, is the stop's answer.
func (d *Driver) unlessExiting(ctx context.Context, v *vm, err error) error {
	if hypervisor.CodeOf(err) != hypervisor.CodeFailed {
		return err
	}
	// Said before the wait, which may last timeouts.stop: why a stop is
	// taking that long.
	d.log.Debug("QMP socket unreachable: waiting for QEMU to exit by itself", "vm", v.name, "within", d.cfg.Timeouts.Stop.String(), "qmp", err)
	if !d.waitGone(ctx, v, d.cfg.Timeouts.Stop) {
		return err
	}
	d.log.Info("VM exited by itself as it was being stopped", "vm", v.name, "qmp", err)
	return nil
}

// killProcess SIGKILLs the VM's QEMU process and waits, within ctx, until
// it is gone.
func (d *Driver) killProcess(ctx context.Context, v *vm, pid int) error {
	d.markStopping(v, pid)
	if err := kill(pid); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, v.name, "kill QEMU process %d: %v", pid, err)
	}
	d.log.Info("QEMU process killed", "vm", v.name, "pid", pid)
	d.waitGone(ctx, v, d.cfg.Timeouts.Stop)
	return nil
}

// killHolders kills the QEMU processes that hold v's disk without being
// v's own, such as one started by hand on the same image. Other holders
// (qemu-img, qemu-nbd) are not VM processes: the VM is locked (§5.2).
func (d *Driver) killHolders(ctx context.Context, v *vm) error {
	killed := 0
	for _, h := range holders(v.Disk) {
		if !h.isVMProcess() {
			continue
		}
		if err := kill(h.pid); err != nil {
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, v.name, "kill %s: %v", h, err)
		}
		d.log.Warn("killed a QEMU process holding the VM's disk", "vm", v.name, "process", h.String())
		killed++
	}
	if killed == 0 {
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStop, v.name,
			"no VM process to kill; the disk %s is held by %s", v.Disk, describeHolders(v))
	}
	d.waitUnlocked(ctx, v, d.cfg.Timeouts.Stop)
	return nil
}

func (d *Driver) markStopping(v *vm, pid int) {
	d.mu.Lock()
	d.stopping[v.name] = pid
	d.mu.Unlock()
}

// waitGone waits, within ctx and bound, until the VM's QEMU process is
// gone; it reports whether it is.
func (d *Driver) waitGone(ctx context.Context, v *vm, bound time.Duration) bool {
	return poll(ctx, bound, func() bool {
		pid, _, err := pidfileHolder(v.path(filePID))
		return err == nil && pid == 0
	})
}

// waitUnlocked waits, within ctx and bound, until no process holds the
// VM's disk; it reports whether none does.
func (d *Driver) waitUnlocked(ctx context.Context, v *vm, bound time.Duration) bool {
	return poll(ctx, bound, func() bool {
		held, err := diskLocked(v.Disk)
		return err == nil && !held
	})
}

// pollPolicy paces the checks of a QEMU process going or a disk lock
// being let go: QEMU signals no process exit the plugin could wait on (it
// is not the plugin's child once the plugin that launched it has gone).
var pollPolicy = wait.Policy{Initial: time.Millisecond, Max: 20 * time.Millisecond, Factor: 2}

// poll checks cond until it holds (true), or ctx or bound ends (false),
// looking one last time just before the end.
func poll(ctx context.Context, bound time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	return wait.Until(ctx, pollPolicy, func(context.Context) (bool, error) { return cond(), nil }) == nil
}

// Unlock ends what holds an off VM (§6): a preserved QEMU process is told
// to quit, and killed if it has not exited within timeouts.stop. Another
// process holding the disk is waited for within the deadline; one that
// keeps it answers locked.
func (d *Driver) Unlock(ctx context.Context, name string) error {
	v, release, err := d.begin(ctx, hypervisor.OpUnlock, name)
	if err != nil {
		return err
	}
	defer release()
	st, p := d.observe(ctx, v)
	switch {
	case !st.Power.IsOff():
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpUnlock, name,
			"the VM is %s; stop it first", st.Raw)
	case st.Lock == hypervisor.LockUnlocked:
		return nil
	}
	if p.pid != 0 {
		if err := d.endPreserved(ctx, v, p.pid); err != nil {
			return err
		}
	}
	if !d.waitUnlocked(ctx, v, d.cfg.Timeouts.Stop) {
		if err := hypervisor.FromContext(ctx, hypervisor.OpUnlock, name); err != nil {
			return err
		}
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpUnlock, name,
			"the disk %s is still held by %s", v.Disk, describeHolders(v))
	}
	d.log.Info("VM unlocked", "vm", name)
	return nil
}

// endPreserved ends a QEMU process whose guest is off: quit, then SIGKILL
// if it lingers or its monitor is held.
func (d *Driver) endPreserved(ctx context.Context, v *vm, pid int) error {
	d.markStopping(v, pid)
	if m, err := d.monitor(ctx, hypervisor.OpUnlock, v); err == nil {
		_ = m.Execute(ctx, "quit", nil, nil)
		m.Close()
		if d.waitGone(ctx, v, d.cfg.Timeouts.Stop) {
			return nil
		}
	}
	if err := hypervisor.FromContext(ctx, hypervisor.OpUnlock, v.name); err != nil {
		return err
	}
	if err := kill(pid); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpUnlock, v.name, "kill QEMU process %d: %v", pid, err)
	}
	d.waitGone(ctx, v, d.cfg.Timeouts.Stop)
	return nil
}

// Cleanup is the driver's complete cleanup (§8): end the QEMU process
// (quit, SIGKILL if it lingers or its monitor is held), wait for the disk
// to be free, revert it. A VM that is off, unlocked and already clean at
// the snapshot is left alone.
func (d *Driver) Cleanup(ctx context.Context, name string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	v, release, err := d.begin(ctx, hypervisor.OpCleanup, name)
	if err != nil {
		return hypervisor.CleanupResult{}, err
	}
	defer release()
	var res hypervisor.CleanupResult
	step := func(action string, begun time.Time, err error) error {
		outcome := "done"
		if err != nil {
			outcome = "failed"
		}
		res.Steps = append(res.Steps, hypervisor.CleanupStep{Action: action, Duration: time.Since(begun), Outcome: outcome})
		return err
	}
	snapshot := req.Snapshot
	if req.Restore {
		if snapshot == "" {
			snapshot = loadRecord(v).Snapshot
		}
		if _, err := d.findSnapshot(hypervisor.OpCleanup, v, snapshot); err != nil {
			return res, err
		}
	}
	_, p := d.observe(ctx, v)
	if p.pid != 0 {
		begun := time.Now()
		d.markStopping(v, p.pid)
		action := "quit"
		m, err := d.monitor(ctx, hypervisor.OpCleanup, v)
		switch {
		case err == nil:
			_ = m.Execute(ctx, "quit", nil, nil)
			m.Close()
		case ctx.Err() != nil:
			return res, step(action, begun, hypervisor.FromContext(ctx, hypervisor.OpCleanup, name))
		}
		// A monitor held by another client cannot be told to quit: kill
		// at once rather than wait for an exit that will not come.
		if err != nil || !d.waitGone(ctx, v, d.cfg.Timeouts.Stop) {
			if err := hypervisor.FromContext(ctx, hypervisor.OpCleanup, name); err != nil {
				return res, step(action, begun, err)
			}
			action = "kill"
			if err := kill(p.pid); err != nil {
				return res, step(action, begun, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCleanup, name, "kill QEMU process %d: %v", p.pid, err))
			}
			if !d.waitGone(ctx, v, d.cfg.Timeouts.Stop) {
				return res, step(action, begun, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCleanup, name, "QEMU process %d did not exit after SIGKILL", p.pid))
			}
		}
		_ = step(action, begun, nil)
	}
	if held, _ := diskLocked(v.Disk); held {
		begun := time.Now()
		if !d.waitUnlocked(ctx, v, d.cfg.Timeouts.Stop) {
			err := hypervisor.FromContext(ctx, hypervisor.OpCleanup, name)
			if err == nil {
				err = hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpCleanup, name, "the disk %s is held by %s", v.Disk, describeHolders(v))
			}
			return res, step("wait-unlock", begun, err)
		}
		_ = step("wait-unlock", begun, nil)
	}
	rec := loadRecord(v)
	if req.Restore && !(rec.Clean && rec.Snapshot == snapshot && !stalePID(v)) {
		begun := time.Now()
		if err := d.revert(ctx, hypervisor.OpCleanup, v, snapshot); err != nil {
			return res, step("restore "+snapshot, begun, err)
		}
		_ = step("restore "+snapshot, begun, nil)
	}
	return res, nil
}

// stalePID reports a pid file left by a killed QEMU.
func stalePID(v *vm) bool {
	_, stale, _ := pidfileHolder(v.path(filePID))
	return stale
}
