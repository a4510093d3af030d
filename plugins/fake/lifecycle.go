package fake

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Status reports the VM's state with every transition that has fallen due
// applied (§3). It takes no lock of the simulated hypervisor (§3.6).
func (d *Driver) Status(ctx context.Context, name string) (hypervisor.Status, error) {
	ctx = d.honour(ctx)
	v, err := d.begin(ctx, hypervisor.OpStatus, name)
	if err != nil {
		return hypervisor.Status{}, err
	}
	d.holdSession(ViolationStatusLocks, name)
	d.lock()
	defer d.unlock()
	now := time.Now()
	v.advance(now)
	if useFault(&v.st.Used.Status, v.faults.StatusFailures) {
		d.commitLocked()
		return hypervisor.Status{}, hypervisor.NewError(hypervisor.CodeUnavailable, hypervisor.OpStatus, name,
			"The object is not ready (E_ACCESSDENIED)")
	}
	st := d.report(v, now)
	if err := d.exitDuringLocked(v, nil, hypervisor.OpStatus); err != nil {
		return hypervisor.Status{}, err
	}
	return st, nil
}

// Start powers an off-like, unlocked VM on and returns once it is starting
// (§4.1); it reaches running after the start time. A VM resumed from saved
// has its guest ready at once; a booted one after guest_ready.
func (d *Driver) Start(ctx context.Context, name string) error {
	ctx = d.honour(ctx)
	v, err := d.begin(ctx, hypervisor.OpStart, name)
	if err != nil {
		return err
	}
	d.lock()
	defer d.unlock()
	now := time.Now()
	v.advance(now)
	if p := v.st.Power; p == hypervisor.PowerRunning || p == hypervisor.PowerStarting {
		return d.startAgain(v, now) // §4.2: nothing to send, nothing changes
	}
	c := d.newCall(hypervisor.OpStart, name)
	err = d.startLocked(v, now)
	if xerr := d.exitDuringLocked(v, c, hypervisor.OpStart); xerr != nil {
		return xerr
	}
	return c.done(err)
}

func (d *Driver) startLocked(v *vm, now time.Time) error {
	switch p := v.st.Power; {
	case p == hypervisor.PowerPaused || p == hypervisor.PowerStuck || p == hypervisor.PowerUnknown:
		return invalidState(hypervisor.OpStart, v.name, p)
	case p == hypervisor.PowerStopping || p == hypervisor.PowerRestoring:
		// The VM process or a restore still holds the session; it will let go.
		return lockedBySession(hypervisor.OpStart, v.name)
	}
	if useFault(&v.st.Used.Start, v.faults.StartFailures) {
		d.commitLocked()
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, v.name,
			"The virtual machine '%s' has terminated unexpectedly during startup with exit code 1 (0x1)", v.name)
	}
	if err := d.heldByRead(hypervisor.OpStart, v.name); err != nil {
		return err
	}
	d.stealLock(v)
	if v.locked(now) {
		return lockedBySession(hypervisor.OpStart, v.name) // §4.3
	}
	due := now.Add(v.timing.Start)
	v.st.GuestReady = due.Add(v.timing.GuestReady)
	if v.st.Power == hypervisor.PowerSaved {
		v.st.GuestReady = due // the guest resumes where it was saved
	}
	v.st.Power = hypervisor.PowerStarting
	v.st.Changed = now
	v.st.Pending = &transition{Kind: kindBoot, To: hypervisor.PowerRunning, Due: due}
	v.st.LockedUntil = time.Time{}
	v.st.Dirty = true
	d.holdLocked(v)
	d.commitLocked()
	return nil
}

// Stop sends the stop method and returns once the hypervisor accepted it
// (§5); the VM gets off-like later, by state. An off-like VM is left alone
// and nothing is journaled (§5.2).
func (d *Driver) Stop(ctx context.Context, name string, method hypervisor.StopMethod) error {
	if !method.Valid() {
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpStop, name, "unknown stop method %q", method)
	}
	if !d.caps.Has(method.Capability()) {
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpStop, name,
			"stop method %q not declared", method)
	}
	v, err := d.begin(d.honour(ctx), hypervisor.OpStop, name)
	if err != nil {
		return err
	}
	d.lock()
	defer d.unlock()
	now := time.Now()
	v.advance(now)
	if err, broken := d.stopBroken(v, method, now); broken {
		return err
	}
	if err := d.heldByRead(hypervisor.OpStop, name); err != nil && !v.st.Power.IsOff() {
		return err
	}
	if v.st.Power.IsOff() {
		if d.breaks(ViolationStopOffFails) && !v.locked(now) {
			return invalidState(hypervisor.OpStop, name, v.st.Power)
		}
		if method == hypervisor.StopEmergency && v.locked(now) {
			return d.killLingeringLocked(v, now)
		}
		return nil
	}
	c := d.newCall(hypervisor.OpStop, name)
	c.e.Method = method
	err = d.stopLocked(v, method, now)
	if xerr := d.exitDuringLocked(v, c, hypervisor.OpStop, string(method)); xerr != nil {
		return xerr
	}
	return c.done(err)
}

func (d *Driver) stopLocked(v *vm, method hypervisor.StopMethod, now time.Time) error {
	p := v.st.Power
	switch method {
	case hypervisor.StopACPI:
		if p != hypervisor.PowerRunning {
			return invalidState(hypervisor.OpStop, v.name, p)
		}
		if v.faults.ACPIIgnored {
			return nil // the button was pressed; the guest did not care
		}
		v.st.Power = hypervisor.PowerStopping
		v.st.Changed = now
		v.leave(kindShutdown, hypervisor.PowerOff, now.Add(v.timing.ACPIShutdown))
	case hypervisor.StopPowerOff:
		if useFault(&v.st.Used.PowerOff, v.faults.PowerOffFailures) {
			d.commitLocked()
			return d.poweroffFault(v)
		}
		if p != hypervisor.PowerRunning && p != hypervisor.PowerPaused && p != hypervisor.PowerStuck {
			return invalidState(hypervisor.OpStop, v.name, p)
		}
		v.st.Power = hypervisor.PowerStopping
		v.st.Changed = now
		if !v.faults.StuckInStopping { // stuck: only an emergency stop gets it out
			v.leave(kindShutdown, hypervisor.PowerOff, now.Add(v.timing.PowerOff))
		} else if v.st.Pending != nil && v.st.Pending.Kind != kindKill {
			v.st.Pending = nil
		}
	case hypervisor.StopEmergency:
		if !hasProcess(p) {
			return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStop, v.name,
				"The machine '%s' does not have a VM process", v.name)
		}
		v.leave(kindKill, hypervisor.PowerAborted, now.Add(v.timing.Emergency))
	}
	d.holdLocked(v)
	d.commitLocked()
	return nil
}

// killLingeringLocked is an emergency stop of an off VM whose session is
// still held (§5.2): a VM process still on its way out is killed and its
// session goes with it; a session that no VM process holds (a stale lock,
// or the lock_held_after_stop fault's torn-down session) cannot be killed.
func (d *Driver) killLingeringLocked(v *vm, now time.Time) error {
	c := d.newCall(hypervisor.OpStop, v.name)
	c.e.Method = hypervisor.StopEmergency
	if v.st.StaleLock || v.faults.LockHeldAfterStop > 0 {
		return c.done(hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStop, v.name,
			"The machine '%s' does not have a VM process", v.name))
	}
	if until := now.Add(v.timing.Emergency); until.Before(v.st.LockedUntil) {
		v.st.LockedUntil = until
	}
	d.commitLocked()
	return c.done(nil)
}

func (d *Driver) poweroffFault(v *vm) error {
	switch v.faults.poweroffCode() {
	case hypervisor.CodeLocked:
		return lockedForSession(hypervisor.OpStop, v.name)
	case hypervisor.CodeInvalidState:
		return invalidState(hypervisor.OpStop, v.name, v.st.Power)
	}
	return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, v.name, "Failed to power off machine")
}

// Unlock releases the session left behind by a gone VM process (§6). A
// lock that is still tearing down cannot be hurried: Unlock waits for it
// within ctx. A stale one is released, which takes unlock_after_stop.
func (d *Driver) Unlock(ctx context.Context, name string) error {
	if !d.caps.Has(hypervisor.CapUnlock) || d.breaks(ViolationUnsupportedUnlock) {
		return hypervisor.Unsupported(hypervisor.OpUnlock, name)
	}
	ctx = d.honour(ctx)
	v, err := d.begin(ctx, hypervisor.OpUnlock, name)
	if err != nil {
		return err
	}
	d.lock()
	now := time.Now()
	v.advance(now)
	if err, broken := d.unlockBroken(v, now); broken {
		d.unlock()
		return err
	}
	if p := v.st.Power; !p.IsOff() {
		d.unlock()
		return invalidState(hypervisor.OpUnlock, name, p) // §6.1
	}
	if !v.locked(now) {
		d.unlock()
		return nil // §6.2
	}
	c := d.newCall(hypervisor.OpUnlock, name)
	d.releaseLocked(v, now)
	xerr := d.exitDuringLocked(v, c, hypervisor.OpUnlock)
	d.unlock()
	if xerr != nil {
		return xerr
	}
	if d.breaks(ViolationUnlockReturnsEarly) {
		d.lock()
		d.holdLockLocked(v, 1)
		d.unlock()
		return c.done(nil)
	}
	return c.done(d.waitUnlocked(ctx, hypervisor.OpUnlock, v))
}

// releaseLocked asks for a stale session to be torn down.
func (d *Driver) releaseLocked(v *vm, now time.Time) {
	if !v.st.StaleLock {
		return
	}
	v.st.StaleLock = false
	if until := now.Add(v.timing.UnlockAfterStop); until.After(v.st.LockedUntil) {
		v.st.LockedUntil = until
	}
	d.commitLocked()
}

func (d *Driver) waitUnlocked(ctx context.Context, op string, v *vm) error {
	return d.waitFor(ctx, op, v, func(now time.Time) (bool, error) {
		if !v.st.Power.IsOff() {
			// Someone started the VM meanwhile; it is not ours to unlock.
			return false, invalidState(op, v.name, v.st.Power)
		}
		return !v.locked(now), nil
	})
}

// Restore returns the VM to a snapshot (§7), blocking for the restore time.
// If ctx ends first the restore is abandoned and the VM is as it was.
func (d *Driver) Restore(ctx context.Context, name, snapshot string) error {
	if !d.caps.Has(hypervisor.CapRestore) {
		return hypervisor.Unsupported(hypervisor.OpRestore, name)
	}
	defer d.serialize()()
	ctx = d.honour(ctx)
	v, err := d.begin(ctx, hypervisor.OpRestore, name)
	if err != nil {
		return err
	}
	c := d.newCall(hypervisor.OpRestore, name)
	c.e.Snapshot = snapshot
	d.lock()
	now := time.Now()
	v.advance(now)
	t, err := d.startRestoreLocked(hypervisor.OpRestore, v, snapshot, now)
	if t != nil {
		c.e.Snapshot = t.Snapshot
	}
	xerr := d.exitDuringLocked(v, c, hypervisor.OpRestore)
	d.unlock()
	if xerr != nil {
		return xerr
	}
	if err != nil {
		return c.done(err)
	}
	if d.breaks(ViolationLateRestore) {
		d.lock()
		d.holdLocked(v)
		d.unlock()
		return c.done(nil)
	}
	return c.done(d.waitRestored(ctx, hypervisor.OpRestore, v, t))
}

// resolveSnapshot names the snapshot a restore goes to (§7.1).
func (v *vm) resolveSnapshot(op, snapshot string) (string, error) {
	if snapshot == "" {
		snapshot = v.st.CurrentSnapshot
		if snapshot == "" {
			return "", hypervisor.NewError(hypervisor.CodeNotFound, op, v.name,
				"This machine does not have any snapshots")
		}
	}
	if !v.hasSnapshot(snapshot) {
		return "", hypervisor.NewError(hypervisor.CodeNotFound, op, v.name,
			"Could not find a snapshot named '%s'", snapshot)
	}
	return snapshot, nil
}

// startRestoreLocked checks that a restore may begin and begins it.
func (d *Driver) startRestoreLocked(op string, v *vm, snapshot string, now time.Time) (*transition, error) {
	snap, err := d.resolveSnapshot(v, op, snapshot)
	if err != nil {
		return nil, err
	}
	if p := v.st.Power; p == hypervisor.PowerUnknown {
		return nil, invalidState(op, v.name, p)
	}
	if err, broken := d.restoreBroken(op, v, now); broken {
		return nil, err
	}
	if p := v.st.Power; hasProcess(p) {
		return nil, hypervisor.NewError(hypervisor.CodeInvalidState, op, v.name,
			"Cannot delete the current state of the running machine (machine state: %s)", enumStates[p])
	}
	if v.locked(now) {
		return nil, lockedForSession(op, v.name) // §7.2
	}
	if useFault(&v.st.Used.Restore, v.faults.RestoreFailures) {
		d.commitLocked()
		return nil, hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "Snapshot operation failed")
	}
	to := hypervisor.PowerOff
	if v.online[snap] {
		to = hypervisor.PowerSaved
	}
	to = d.restoredTo(v, snap, to)
	t := &transition{
		Kind: kindRestore, To: to, Due: now.Add(v.timing.Restore), Snapshot: snap,
		From: v.st.Power, FromChanged: v.st.Changed,
	}
	v.st.Power = hypervisor.PowerRestoring
	v.st.Changed = now
	v.st.Pending = t
	d.commitLocked()
	return t, nil
}

// waitRestored waits for restore t to complete; if ctx ends first it
// abandons the restore so that no work goes on for a caller who left.
func (d *Driver) waitRestored(ctx context.Context, op string, v *vm, t *transition) error {
	err := d.waitFor(ctx, op, v, func(time.Time) (bool, error) {
		return !v.st.Pending.is(t), nil
	})
	d.lock()
	switch {
	case err == nil:
		d.restoredLocked(v)
	case v.st.Pending.is(t):
		d.abandonLocked(v, t)
	}
	d.unlock()
	return err
}

// Cleanup is the fake's native complete cleanup (§8): it stops the VM
// (power-off, then an emergency stop if that fails or the VM hangs in
// stopping), waits for or releases the session lock, and restores if asked
// and the VM ran since its last restore. It reports each step it took:
// "poweroff", "emergency", "wait-stop", "wait-restore", "wait-unlock",
// "unlock", "restore <snapshot>".
func (d *Driver) Cleanup(ctx context.Context, name string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	if !d.caps.Has(hypervisor.CapCleanup) {
		return hypervisor.CleanupResult{}, hypervisor.Unsupported(hypervisor.OpCleanup, name)
	}
	ctx = d.honour(ctx)
	v, err := d.begin(ctx, hypervisor.OpCleanup, name)
	if err != nil {
		return hypervisor.CleanupResult{}, err
	}
	cl := &cleanup{d: d, v: v, c: d.newCall(hypervisor.OpCleanup, name)}
	err = cl.run(ctx, req)
	outcome := "done"
	if err != nil || cl.exited != nil {
		outcome = "failed"
	}
	cl.closeStep(time.Now(), outcome)
	res := hypervisor.CleanupResult{Steps: cl.steps}
	if cl.exited != nil {
		return res, cl.exited
	}
	cl.c.e.Actions = cl.actions
	if err != nil {
		err = asCleanupError(name, err)
	}
	return res, cl.c.done(err)
}

// cleanup is one run of Cleanup.
type cleanup struct {
	d       *Driver
	v       *vm
	c       *call
	actions []string
	steps   []hypervisor.CleanupStep
	begun   time.Time // when the last step began
	exited  error
}

func (cl *cleanup) run(ctx context.Context, req hypervisor.CleanupRequest) error {
	d, v := cl.d, cl.v
	triedPowerOff := false
	for {
		d.lock()
		now := time.Now()
		v.advance(now)
		p := v.st.Power
		var err error
		switch {
		case p.IsOff():
			d.unlock()
			return cl.unlockAndRestore(ctx, req)
		case p == hypervisor.PowerRestoring:
			d.unlock()
			cl.act("wait-restore")
			err = d.waitFor(ctx, hypervisor.OpCleanup, v, func(time.Time) (bool, error) {
				return v.st.Power != hypervisor.PowerRestoring, nil
			})
		case !triedPowerOff && (p == hypervisor.PowerRunning || p == hypervisor.PowerPaused || p == hypervisor.PowerStuck):
			triedPowerOff = true
			if serr := cl.sendLocked(hypervisor.StopPowerOff, now); serr != nil {
				d.logger.Debug("cleanup: power-off failed, escalating", "vm", v.name, "error", serr)
			}
			d.unlock()
		case v.st.Pending != nil && v.st.Pending.To.IsOff():
			// The VM is on its way off (our power-off, or someone's stop).
			if len(cl.actions) == 0 {
				cl.act("wait-stop")
			}
			d.unlock()
			err = d.waitFor(ctx, hypervisor.OpCleanup, v, func(time.Time) (bool, error) {
				return v.st.Power.IsOff() || v.st.Pending == nil, nil
			})
		default:
			// Starting, hanging in stopping, or a power-off that did not take.
			serr := cl.sendLocked(hypervisor.StopEmergency, now)
			d.unlock()
			if serr != nil {
				return serr
			}
		}
		if cl.exited != nil {
			return cl.exited
		}
		if err != nil {
			return err
		}
	}
}

// sendLocked sends a stop command on the cleanup's behalf, journaled as a
// stop of its own.
func (cl *cleanup) sendLocked(method hypervisor.StopMethod, now time.Time) error {
	cl.act(string(method))
	c := cl.d.newCall(hypervisor.OpStop, cl.v.name)
	c.e.Method, c.e.Via = method, hypervisor.OpCleanup
	err := c.done(cl.d.stopLocked(cl.v, method, now))
	cl.exitLocked()
	return err
}

func (cl *cleanup) unlockAndRestore(ctx context.Context, req hypervisor.CleanupRequest) error {
	if err := cl.unlock(ctx); err != nil || cl.exited != nil {
		return cmp.Or(cl.exited, err)
	}
	if req.Restore {
		if err := cl.restore(ctx, req.Snapshot); err != nil || cl.exited != nil {
			return cmp.Or(cl.exited, err)
		}
	}
	// Nothing sent fired the exit_during fault; it fires before the answer.
	cl.d.lock()
	defer cl.d.unlock()
	cl.exitLocked()
	return cl.exited
}

// unlock releases a stale session or waits for a lingering one to go.
func (cl *cleanup) unlock(ctx context.Context) error {
	d, v := cl.d, cl.v
	d.lock()
	now := time.Now()
	v.advance(now)
	switch {
	case d.skipsUnlock() && cl.stopped():
		// The restore this cleanup may go on to, and the caller after it,
		// find the session its stop left behind, however long the stop
		// took to come to this.
		d.holdLockLocked(v, 2)
		d.unlock()
		return nil
	case !v.locked(now) || d.skipsUnlock():
		d.unlock()
		return nil
	case v.st.StaleLock:
		cl.act("unlock")
		c := d.newCall(hypervisor.OpUnlock, v.name)
		c.e.Via = hypervisor.OpCleanup
		d.releaseLocked(v, now)
		c.done(nil)
		cl.exitLocked()
	default:
		cl.act("wait-unlock")
	}
	d.unlock()
	if cl.exited != nil {
		return nil
	}
	return d.waitUnlocked(ctx, hypervisor.OpCleanup, v)
}

// restore restores the snapshot unless the VM has not run since it was
// restored to it (§8.2).
func (cl *cleanup) restore(ctx context.Context, snapshot string) error {
	d, v := cl.d, cl.v
	d.lock()
	now := time.Now()
	v.advance(now)
	snap, err := d.resolveSnapshot(v, hypervisor.OpCleanup, snapshot)
	if err != nil || (!v.st.Dirty && v.st.CurrentSnapshot == snap && !d.breaks(ViolationCleanupRestoresAgain)) {
		d.unlock()
		return err
	}
	cl.act("restore " + snap)
	c := d.newCall(hypervisor.OpRestore, v.name)
	c.e.Snapshot, c.e.Via = snap, hypervisor.OpCleanup
	t, err := d.startRestoreLocked(hypervisor.OpCleanup, v, snap, now)
	if err != nil {
		d.unlock()
		return c.done(err)
	}
	cl.exitLocked()
	d.unlock()
	if cl.exited != nil {
		return nil
	}
	return c.done(d.waitRestored(ctx, hypervisor.OpCleanup, v, t))
}

// stopped reports whether the cleanup stopped the VM or waited for it to
// stop, which leaves its session behind for a while.
func (cl *cleanup) stopped() bool {
	return slices.ContainsFunc(cl.actions, func(a string) bool {
		return a == string(hypervisor.StopPowerOff) || a == string(hypervisor.StopEmergency) || a == "wait-stop"
	})
}

// act records that the cleanup began step a, which ends the step before it.
func (cl *cleanup) act(a string) {
	now := time.Now()
	cl.closeStep(now, "done")
	cl.actions = append(cl.actions, a)
	cl.steps = append(cl.steps, hypervisor.CleanupStep{Action: a})
	cl.begun = now
}

// closeStep ends the step under way, if any, with outcome.
func (cl *cleanup) closeStep(now time.Time, outcome string) {
	if n := len(cl.steps); n > 0 && cl.steps[n-1].Outcome == "" {
		cl.steps[n-1].Duration = now.Sub(cl.begun)
		cl.steps[n-1].Outcome = outcome
	}
}

// exitLocked fires an exit_during "cleanup" fault at the first command the
// cleanup sent, or before it answers if it sent none.
func (cl *cleanup) exitLocked() {
	if cl.exited == nil {
		cl.c.e.Actions = cl.actions
		cl.exited = cl.d.exitDuringLocked(cl.v, cl.c, hypervisor.OpCleanup)
	}
}

// asCleanupError reports a failed step as a failure of the cleanup, keeping
// its code and its words.
func asCleanupError(name string, err error) error {
	var e *hypervisor.Error
	if errors.As(err, &e) && e.Op == hypervisor.OpCleanup {
		return err
	}
	return &hypervisor.Error{Code: hypervisor.CodeOf(err), Op: hypervisor.OpCleanup, VM: name,
		Message: err.Error(), Err: err}
}

func invalidState(op, name string, p hypervisor.PowerState) error {
	return hypervisor.NewError(hypervisor.CodeInvalidState, op, name, "Invalid machine state: %s", enumStates[p])
}

// lockedForSession is VirtualBox's answer to LockMachine on a VM whose
// session is held or still being torn down.
func lockedForSession(op, name string) error {
	return hypervisor.NewError(hypervisor.CodeLocked, op, name,
		"The machine '%s' is already locked for a session (or being unlocked)", name)
}

// lockedBySession is VirtualBox's answer to startvm on such a VM.
func lockedBySession(op, name string) error {
	return hypervisor.NewError(hypervisor.CodeLocked, op, name,
		"The machine '%s' is already locked by a session (or being locked or unlocked)", name)
}
