package fake

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Violation is one rule of the contract the fake can be told to break, so
// that the conformance suite (sdk/conformance) can show that it catches a
// driver with that bug, and catches nothing else. Each names the rule of
// docs/contract.md it breaks. They exist for tests of the suite; a fake
// that breaks none is the reference driver.
type Violation string

// The violations, set with violations = ["early-off", ...].
const (
	// ViolationInfoUnstable: Info reports another version on every call
	// (§1.1).
	ViolationInfoUnstable Violation = "info-unstable"
	// ViolationUndeclaredWatch: Info leaves watch out, yet Watch works
	// (§1.2a).
	ViolationUndeclaredWatch Violation = "undeclared-watch"
	// ViolationUndeclaredExec: Info leaves guest.exec out; Exec answers
	// unsupported while the VM is not running, and runs the command once it
	// is (§1.2a).
	ViolationUndeclaredExec Violation = "undeclared-exec"
	// ViolationUnsupportedUnlock: unlock is declared, yet Unlock answers
	// unsupported (§1.2b).
	ViolationUnsupportedUnlock Violation = "unsupported-unlock"
	// ViolationListDropsLast: ListVMs leaves out the last VM by name
	// (§2.1a).
	ViolationListDropsLast Violation = "list-drops-last"
	// ViolationListUnstable: ListVMs rotates its order on every call
	// (§2.1b).
	ViolationListUnstable Violation = "list-unstable"
	// ViolationListLocks: ListVMs holds every VM's session for a moment, in
	// which a start or stop answers locked (§2.2).
	ViolationListLocks Violation = "list-locks"
	// ViolationEmptyRaw: Status leaves Raw empty while a VM starts (§3.2a).
	ViolationEmptyRaw Violation = "empty-raw"
	// ViolationUnknownAsOff: a state the driver has no word for (raw_state)
	// is reported off instead of unknown (§3.2b).
	ViolationUnknownAsOff Violation = "unknown-as-off"
	// ViolationEarlyOff: Status and Watch report a VM as off (or aborted)
	// as soon as a stop is under way, while its process still exists
	// (§3.2c: a VM is only off when the hypervisor says so).
	ViolationEarlyOff Violation = "early-off"
	// ViolationLockUnknown: with status.lock declared, an unlocked VM's lock
	// is reported unknown (§3.3a).
	ViolationLockUnknown Violation = "lock-unknown"
	// ViolationForgetLock: Status and Watch report a VM unlocked as soon as
	// its process is gone, while its session is still held (§3.3b).
	ViolationForgetLock Violation = "forget-lock"
	// ViolationStaleSnapshotName: CurrentSnapshot names the VM's newest
	// snapshot whichever it was restored to (§3.4).
	ViolationStaleSnapshotName Violation = "stale-snapshot-name"
	// ViolationStateChangedFrozen: StateChanged is one fixed time whatever
	// the VM does (§3.5).
	ViolationStateChangedFrozen Violation = "state-changed-frozen"
	// ViolationStatusLocks: Status holds the VM's session for a moment, in
	// which a start or stop answers locked (§3.6).
	ViolationStatusLocks Violation = "status-locks"
	// ViolationLateStart: Status reports a starting VM still off, as a
	// driver whose Start returns before the hypervisor took the request
	// (§4.1).
	ViolationLateStart Violation = "late-start"
	// ViolationRestartRunning: Start of a running VM starts it again
	// (§4.2).
	ViolationRestartRunning Violation = "restart-running"
	// ViolationStartStealsLock: Start of an off VM whose session is held
	// releases the session and starts it instead of answering locked
	// (§4.3).
	ViolationStartStealsLock Violation = "start-steals-lock"
	// ViolationLateStop: Status reports a VM on its way off still running,
	// as a driver whose power-off returns before the hypervisor took the
	// request (§5.1a).
	ViolationLateStop Violation = "late-stop"
	// ViolationACPIRefused: the power button of a running VM answers failed
	// (§5.1b).
	ViolationACPIRefused Violation = "acpi-refused"
	// ViolationEmergencyNoop: an emergency stop of a running VM answers
	// success and does nothing (§5.1b).
	ViolationEmergencyNoop Violation = "emergency-noop"
	// ViolationStopOffFails: stopping an off-like VM answers invalid state
	// instead of succeeding (§5.2a).
	ViolationStopOffFails Violation = "stop-off-fails"
	// ViolationEmergencyLingeringNoop: an emergency stop of an off VM whose
	// session is held answers success and releases nothing (§5.2b).
	ViolationEmergencyLingeringNoop Violation = "emergency-lingering-noop"
	// ViolationStopStoppingFailed: a power-off of a VM already stopping
	// answers failed instead of invalid state (§5.5).
	ViolationStopStoppingFailed Violation = "stop-stopping-failed"
	// ViolationUnlockRunningOK: Unlock of a running VM answers success
	// (§6.1).
	ViolationUnlockRunningOK Violation = "unlock-running-ok"
	// ViolationUnlockUnlockedFails: Unlock of an unlocked VM answers failed
	// (§6.2).
	ViolationUnlockUnlockedFails Violation = "unlock-unlocked-fails"
	// ViolationUnlockReturnsEarly: Unlock of a held session returns before
	// the session is gone (§6.3).
	ViolationUnlockReturnsEarly Violation = "unlock-returns-early"
	// ViolationEmptyRestoresFirst: Restore with an empty snapshot name
	// restores the VM's first snapshot, not its current one (§7.1a).
	ViolationEmptyRestoresFirst Violation = "empty-restores-first"
	// ViolationFailedNotFound: a snapshot that does not exist answers
	// failed instead of not found (§7.1b).
	ViolationFailedNotFound Violation = "failed-not-found"
	// ViolationRestoreRunningLocked: Restore of a running VM answers locked
	// instead of invalid state (§7.2a).
	ViolationRestoreRunningLocked Violation = "restore-running-locked"
	// ViolationRestoreIgnoresLock: Restore of an off VM whose session is
	// held goes ahead instead of answering locked (§7.2b).
	ViolationRestoreIgnoresLock Violation = "restore-ignores-lock"
	// ViolationLateRestore: Restore returns once the restore began, before
	// the VM got there (§7.3).
	ViolationLateRestore Violation = "late-restore"
	// ViolationRestoreCurrentOnly: Restore of a named snapshot restores the
	// current one (§7.3).
	ViolationRestoreCurrentOnly Violation = "restore-current-only"
	// ViolationRestoreKeepsDisk: a restore resets the VM's state and
	// snapshot but keeps its guest disk as the last run left it (§7.3).
	ViolationRestoreKeepsDisk Violation = "restore-keeps-disk"
	// ViolationRestoreTwiceSaved: restoring a VM that is already clean at
	// the snapshot leaves it saved instead of off (§7.4).
	ViolationRestoreTwiceSaved Violation = "restore-twice-saved"
	// ViolationCleanupLeavesLock: Cleanup returns without waiting for, or
	// releasing, the session lock (§8.1).
	ViolationCleanupLeavesLock Violation = "cleanup-leaves-lock"
	// ViolationCleanupRestoresAgain: Cleanup restores a VM that is already
	// clean (§8.2).
	ViolationCleanupRestoresAgain Violation = "cleanup-restores-again"
	// ViolationCopyInTruncates: CopyIn keeps the first 64 KiB of the file
	// (§9.1).
	ViolationCopyInTruncates Violation = "copy-in-truncates"
	// ViolationExecNoStdout: Exec drops the command's stdout (§9.2a).
	ViolationExecNoStdout Violation = "exec-no-stdout"
	// ViolationExecExitError: a command's non-zero exit status is answered
	// as an error instead of a result (§9.2b).
	ViolationExecExitError Violation = "exec-exit-error"
	// ViolationExecTimeoutIgnored: Exec lets a command run past its timeout
	// (§9.2c).
	ViolationExecTimeoutIgnored Violation = "exec-timeout-ignored"
	// ViolationCopyOutTruncates: CopyOut keeps the first 64 KiB of the file
	// (§9.3).
	ViolationCopyOutTruncates Violation = "copy-out-truncates"
	// ViolationExecFloods: Exec keeps every byte a command writes, whatever
	// the request's max_output and the fake's own bound, and never says it
	// dropped any: a guest that writes without end grows the plugin's
	// memory until the call's deadline (§9.5).
	ViolationExecFloods Violation = "exec-floods"
	// ViolationGuestOffFailed: a guest operation on a VM that is not
	// running answers failed instead of invalid state (§9.4).
	ViolationGuestOffFailed Violation = "guest-off-failed"
	// ViolationWatchStaleFirst: a watch first delivers the VM's status
	// without its current snapshot (§10.1a).
	ViolationWatchStaleFirst Violation = "watch-stale-first"
	// ViolationWatchSilent: a watch delivers the current status and then
	// nothing, whatever changes (§10.1b).
	ViolationWatchSilent Violation = "watch-silent"
	// ViolationWatchNeverCloses: a watch stops when its context ends but
	// never closes its channel (§10.1c).
	ViolationWatchNeverCloses Violation = "watch-never-closes"
	// ViolationWatchEmptyStream: a watch of a VM that does not exist is a
	// closed channel instead of an error (§10.1d).
	ViolationWatchEmptyStream Violation = "watch-empty-stream"
	// ViolationEmptyMessages: the errors for a VM that does not exist carry
	// no message (§11.2).
	ViolationEmptyMessages Violation = "empty-messages"
	// ViolationMissingVMFailed: every operation answers failed instead of
	// not found for a VM that does not exist (§11.3).
	ViolationMissingVMFailed Violation = "missing-vm-failed"
	// ViolationDeafCalls: a call whose deadline is less than a second away
	// first spends 3 s without watching it, as a driver whose hypervisor
	// commands ignore their context; its answer comes that late (§12.1a).
	ViolationDeafCalls Violation = "deaf-calls"
	// ViolationIgnoreDeadlines: operations run to their end whatever their
	// context says; the caller still gets its answer at its deadline from
	// the wire, but the work goes on without it (§12.1b).
	ViolationIgnoreDeadlines Violation = "ignore-deadlines"
	// ViolationLateWork: a restore cut short by its deadline answers at
	// once and shows the VM as it was, but finishes in the background when
	// the whole restore would have (§12.1b).
	ViolationLateWork Violation = "late-work"
	// ViolationSerialVMs: restores of different VMs wait for each other
	// (§13.1a).
	ViolationSerialVMs Violation = "serial-vms"
	// ViolationDoubleStartFails: Start of a VM that is still starting
	// answers failed (§13.1b).
	ViolationDoubleStartFails Violation = "double-start-fails"
)

// Violations lists every violation the fake knows, in the contract's order.
var Violations = []Violation{
	ViolationInfoUnstable, ViolationUndeclaredWatch, ViolationUndeclaredExec, ViolationUnsupportedUnlock,
	ViolationListDropsLast, ViolationListUnstable, ViolationListLocks,
	ViolationEmptyRaw, ViolationUnknownAsOff, ViolationEarlyOff, ViolationLockUnknown, ViolationForgetLock,
	ViolationStaleSnapshotName, ViolationStateChangedFrozen, ViolationStatusLocks,
	ViolationLateStart, ViolationRestartRunning, ViolationStartStealsLock,
	ViolationLateStop, ViolationACPIRefused, ViolationEmergencyNoop, ViolationStopOffFails,
	ViolationEmergencyLingeringNoop, ViolationStopStoppingFailed,
	ViolationUnlockRunningOK, ViolationUnlockUnlockedFails, ViolationUnlockReturnsEarly,
	ViolationEmptyRestoresFirst, ViolationFailedNotFound, ViolationRestoreRunningLocked, ViolationRestoreIgnoresLock,
	ViolationLateRestore, ViolationRestoreCurrentOnly, ViolationRestoreKeepsDisk, ViolationRestoreTwiceSaved,
	ViolationCleanupLeavesLock, ViolationCleanupRestoresAgain,
	ViolationCopyInTruncates, ViolationExecNoStdout, ViolationExecExitError, ViolationExecTimeoutIgnored,
	ViolationCopyOutTruncates, ViolationGuestOffFailed, ViolationExecFloods,
	ViolationWatchStaleFirst, ViolationWatchSilent, ViolationWatchNeverCloses, ViolationWatchEmptyStream,
	ViolationEmptyMessages, ViolationMissingVMFailed,
	ViolationDeafCalls, ViolationIgnoreDeadlines, ViolationLateWork,
	ViolationSerialVMs, ViolationDoubleStartFails,
}

// violationState is what the violations need to remember.
type violationState struct {
	infoCalls atomic.Int64
	listCalls atomic.Int64
	serial    sync.Mutex // held through every restore: serial-vms
	readers   sync.Map   // VM name -> *atomic.Int64, reads holding its session
	// lingers is when the session a listing held is gone at last, per VM
	// name (time.Time): list-locks.
	lingers sync.Map
}

// breaks reports whether the driver was told to break rule v.
func (d *Driver) breaks(v Violation) bool { return d.violations[v] }

// frozenTime is the state-change time state-changed-frozen reports.
var frozenTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// report is what Status and Watch tell of v at now: the simulated
// hypervisor's truth, unless the driver was told to misreport it.
func (d *Driver) report(v *vm, now time.Time) hypervisor.Status {
	st := v.status(now, d.caps.Has(hypervisor.CapLockState))
	if d.breaks(ViolationEarlyOff) {
		if t := v.st.Pending; t != nil && (t.Kind == kindShutdown || t.Kind == kindKill) {
			st.Power, st.Raw = t.To, rawStates[t.To]
		}
	}
	if d.breaks(ViolationForgetLock) && st.Lock == hypervisor.LockLocked &&
		!hasProcess(v.st.Power) && v.st.Power != hypervisor.PowerRestoring {
		st.Lock = hypervisor.LockUnlocked
	}
	if d.breaks(ViolationUnknownAsOff) && st.Power == hypervisor.PowerUnknown {
		st.Power = hypervisor.PowerOff
	}
	if d.breaks(ViolationEmptyRaw) && st.Power == hypervisor.PowerStarting {
		st.Raw = ""
	}
	if d.breaks(ViolationLockUnknown) && st.Lock == hypervisor.LockUnlocked {
		st.Lock = hypervisor.LockUnknown
	}
	if d.breaks(ViolationStaleSnapshotName) && len(v.snapshots) > 0 {
		st.CurrentSnapshot = v.snapshots[len(v.snapshots)-1]
	}
	if d.breaks(ViolationStateChangedFrozen) {
		st.StateChanged = frozenTime
	}
	if d.breaks(ViolationLateStart) && st.Power == hypervisor.PowerStarting {
		st.Power, st.Raw = hypervisor.PowerOff, rawStates[hypervisor.PowerOff]
	}
	if d.breaks(ViolationLateStop) && st.Power == hypervisor.PowerStopping {
		st.Power, st.Raw = hypervisor.PowerRunning, rawStates[hypervisor.PowerRunning]
	}
	return st
}

// holdLocked holds the transition v just began, with d.mu held, for as
// many calls as the violation that makes it visible needs, so that the
// violation shows whatever the machine's load: a lie about the transition
// lasts only while it is under way, and a caller that acts on the lie
// must find the truth behind it, not a transition that completed while
// the caller waited for a CPU. early-off's lie is told by one call (the
// status that says off) and acted on by the next; the others show in the
// first call after the one that began the transition. A driver's own
// waits count as calls too, so a cleanup that waits for a held stop is
// not held up.
func (d *Driver) holdLocked(v *vm) {
	t := v.st.Pending
	v.st.Hold = 0
	if t == nil {
		return
	}
	switch t.Kind {
	case kindShutdown, kindKill:
		switch {
		case d.breaks(ViolationEarlyOff):
			v.st.Hold = 2
		case t.Kind == kindShutdown && (d.breaks(ViolationLateStop) || d.breaks(ViolationStopStoppingFailed)):
			v.st.Hold = 1
		}
	case kindBoot:
		// double-start-fails shows only to a second start that finds the
		// VM still starting: held, it does however late that start comes.
		if d.breaks(ViolationLateStart) || d.breaks(ViolationEmptyRaw) || d.breaks(ViolationDoubleStartFails) {
			v.st.Hold = 1
		}
	case kindRestore:
		if d.breaks(ViolationLateRestore) {
			v.st.Hold = 1
		}
	}
}

// holdLockLocked keeps v's session held for the next calls calls, with
// d.mu held, when a violation leaves it behind (unlock-returns-early,
// cleanup-leaves-lock): the call that should have found it released finds
// it held however long it took to come.
func (d *Driver) holdLockLocked(v *vm, calls int) {
	v.st.LockHold = calls
	d.commitLocked()
}

// honour is the context an operation works under: its own, unless the
// driver was told to ignore deadlines. The driver's closing still ends the
// work either way.
func (d *Driver) honour(ctx context.Context) context.Context {
	if d.breaks(ViolationIgnoreDeadlines) {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// deaf spends 3 s without watching ctx when the driver breaks deaf-calls
// and ctx's deadline is less than a second away.
func (d *Driver) deaf(ctx context.Context) {
	if deadline, ok := ctx.Deadline(); ok && d.breaks(ViolationDeafCalls) && time.Until(deadline) < time.Second {
		time.Sleep(3 * time.Second) // the simulated command that does not watch its context
	}
}

// missingVM is the answer for a VM that does not exist.
func (d *Driver) missingVM(op, name string) error {
	switch {
	case d.breaks(ViolationMissingVMFailed):
		return hypervisor.NewError(hypervisor.CodeFailed, op, name, "Could not find a registered machine named '%s'", name)
	case d.breaks(ViolationEmptyMessages):
		return &hypervisor.Error{Code: hypervisor.CodeNotFound, Op: op, VM: name}
	}
	return hypervisor.NewError(hypervisor.CodeNotFound, op, name, "Could not find a registered machine named '%s'", name)
}

// infoOf is what Info reports, with the violations applied.
func (d *Driver) infoOf(info hypervisor.Info) hypervisor.Info {
	if d.breaks(ViolationInfoUnstable) {
		info.Version = fmt.Sprintf("%s+%d", info.Version, d.viol.infoCalls.Add(1))
	}
	var hidden []hypervisor.Capability
	if d.breaks(ViolationUndeclaredWatch) {
		hidden = append(hidden, hypervisor.CapWatch)
	}
	if d.breaks(ViolationUndeclaredExec) {
		hidden = append(hidden, hypervisor.CapGuestExec)
	}
	info.Capabilities = slices.DeleteFunc(info.Capabilities, func(c hypervisor.Capability) bool {
		return slices.Contains(hidden, c)
	})
	return info
}

// listed is what ListVMs reports of out, sorted by name.
func (d *Driver) listed(out []hypervisor.VM) []hypervisor.VM {
	if d.breaks(ViolationListDropsLast) && len(out) > 0 {
		out = out[:len(out)-1]
	}
	if d.breaks(ViolationListUnstable) && len(out) > 1 {
		n := int(d.viol.listCalls.Add(1)) % len(out)
		out = append(out[n:], out[:n]...)
	}
	return out
}

// holdSession has a read hold name's session for a moment when the driver
// breaks v (status-locks, list-locks): a start or stop meanwhile answers
// locked. A listing's sessions linger 300 ms after it.
func (d *Driver) holdSession(v Violation, names ...string) {
	if !d.breaks(v) {
		return
	}
	for _, name := range names {
		d.readers(name).Add(1)
	}
	if v == ViolationListLocks {
		time.Sleep(100 * time.Millisecond) // the simulated listing that holds the sessions
		// The listing's sessions go away a moment after it answers, as a
		// hypervisor's sessions do, so that a start or stop between two
		// listings meets one whatever the machine's load.
		gone := time.Now().Add(300 * time.Millisecond)
		for _, name := range names {
			d.viol.lingers.Store(name, gone)
		}
	} else {
		// A status read holds the session longer than the pause between
		// two reads on a busy machine, yet leaves nothing behind: every
		// check polls the status before it starts or stops a VM.
		time.Sleep(250 * time.Millisecond)
	}
	for _, name := range names {
		d.readers(name).Add(-1)
	}
}

func (d *Driver) readers(name string) *atomic.Int64 {
	n, _ := d.viol.readers.LoadOrStore(name, new(atomic.Int64))
	return n.(*atomic.Int64)
}

// heldByRead is the answer to a start or stop of a VM a read holds.
func (d *Driver) heldByRead(op, name string) error {
	if d.readers(name).Load() > 0 {
		return lockedBySession(op, name)
	}
	if gone, ok := d.viol.lingers.Load(name); ok && time.Now().Before(gone.(time.Time)) {
		return lockedBySession(op, name)
	}
	return nil
}

// startAgain is the answer to Start of a VM that is starting or running:
// nothing to do (§4.2), unless the driver was told otherwise.
func (d *Driver) startAgain(v *vm, now time.Time) error {
	switch {
	case d.breaks(ViolationDoubleStartFails) && v.st.Power == hypervisor.PowerStarting:
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, v.name, "the VM is already starting")
	case d.breaks(ViolationRestartRunning) && v.st.Power == hypervisor.PowerRunning:
		v.st.Power, v.st.Changed = hypervisor.PowerStarting, now
		v.st.Pending = &transition{Kind: kindBoot, To: hypervisor.PowerRunning, Due: now.Add(v.timing.Start)}
		d.commitLocked()
	}
	return nil
}

// stealLock releases a held session for a start when the driver breaks
// start-steals-lock.
func (d *Driver) stealLock(v *vm) {
	if d.breaks(ViolationStartStealsLock) {
		v.st.StaleLock, v.st.LockedUntil = false, time.Time{}
	}
}

// stopBroken is the answer to a stop the driver was told to get wrong;
// ok is false when it keeps the rules for this one.
func (d *Driver) stopBroken(v *vm, method hypervisor.StopMethod, now time.Time) (err error, ok bool) {
	p := v.st.Power
	switch {
	case d.breaks(ViolationACPIRefused) && method == hypervisor.StopACPI && p == hypervisor.PowerRunning:
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, v.name, "The guest did not get the power button"), true
	case d.breaks(ViolationEmergencyNoop) && method == hypervisor.StopEmergency && hasProcess(p):
		return nil, true
	case d.breaks(ViolationStopStoppingFailed) && method == hypervisor.StopPowerOff && p == hypervisor.PowerStopping:
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, v.name, "Failed to power off machine"), true
	case d.breaks(ViolationEmergencyLingeringNoop) && method == hypervisor.StopEmergency && p.IsOff() && v.locked(now):
		return nil, true
	}
	return nil, false
}

// unlockBroken is the answer to an Unlock the driver was told to get
// wrong; ok is false when it keeps the rules for this one.
func (d *Driver) unlockBroken(v *vm, now time.Time) (err error, ok bool) {
	switch {
	case d.breaks(ViolationUnlockRunningOK) && !v.st.Power.IsOff():
		return nil, true
	case d.breaks(ViolationUnlockUnlockedFails) && v.st.Power.IsOff() && !v.locked(now):
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpUnlock, v.name, "The session is not locked"), true
	}
	return nil, false
}

// resolveSnapshot is vm.resolveSnapshot, with the snapshot violations
// applied.
func (d *Driver) resolveSnapshot(v *vm, op, snapshot string) (string, error) {
	if snapshot == "" && d.breaks(ViolationEmptyRestoresFirst) && len(v.snapshots) > 0 {
		snapshot = v.snapshots[0]
	}
	if snapshot != "" && d.breaks(ViolationRestoreCurrentOnly) && v.hasSnapshot(snapshot) && v.st.CurrentSnapshot != "" {
		snapshot = v.st.CurrentSnapshot
	}
	snap, err := v.resolveSnapshot(op, snapshot)
	if err != nil && d.breaks(ViolationFailedNotFound) && hypervisor.IsNotFound(err) {
		return "", hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "Snapshot operation failed")
	}
	return snap, err
}

// restoreBroken is the answer to a restore the driver was told to get
// wrong before it begins; ok is false when it keeps the rules for this one.
func (d *Driver) restoreBroken(op string, v *vm, now time.Time) (err error, ok bool) {
	switch {
	case d.breaks(ViolationRestoreRunningLocked) && hasProcess(v.st.Power):
		return lockedForSession(op, v.name), true
	case d.breaks(ViolationRestoreIgnoresLock) && !hasProcess(v.st.Power) && v.st.Power != hypervisor.PowerRestoring && v.locked(now):
		v.st.StaleLock, v.st.LockedUntil = false, time.Time{}
	}
	return nil, false
}

// restoredTo is the state a restore to snap ends in, to, unless the driver
// breaks restore-twice-saved and the VM is already clean at snap.
func (d *Driver) restoredTo(v *vm, snap string, to hypervisor.PowerState) hypervisor.PowerState {
	if d.breaks(ViolationRestoreTwiceSaved) && !v.st.Dirty && v.st.CurrentSnapshot == snap && v.st.Power.IsOff() {
		return hypervisor.PowerSaved
	}
	return to
}

// serialize holds the driver-wide restore lock when the driver breaks
// serial-vms; call the returned function when the restore ends.
func (d *Driver) serialize() func() {
	if !d.breaks(ViolationSerialVMs) {
		return func() {}
	}
	d.viol.serial.Lock()
	return d.viol.serial.Unlock
}

// restored runs, with d.mu held, when a restore completed: with
// restore-keeps-disk the guest's disk stays the one the last run left.
func (d *Driver) restoredLocked(v *vm) {
	if d.breaks(ViolationRestoreKeepsDisk) {
		v.st.Disk--
		d.commitLocked()
	}
}

// abandonLocked rolls back restore t, whose caller left, with d.mu held.
// With late-work the VM looks as it was but the restore still completes
// when it would have.
func (d *Driver) abandonLocked(v *vm, t *transition) {
	v.st.Power = t.From
	v.st.Changed = t.FromChanged
	v.st.Pending = nil
	if d.breaks(ViolationLateWork) {
		v.st.Pending = &transition{Kind: kindRestore, To: t.To, Due: t.Due, Snapshot: t.Snapshot}
	}
	d.commitLocked()
}

// skipsUnlock reports whether a cleanup leaves the session as it is.
func (d *Driver) skipsUnlock() bool { return d.breaks(ViolationCleanupLeavesLock) }

// truncated cuts a copied file to 64 KiB when the driver breaks v.
func (d *Driver) truncated(v Violation, truncate func(size int64) error) error {
	if d.breaks(v) {
		return truncate(64 << 10)
	}
	return nil
}

// truncateFile cuts the host file path to size if it is longer.
func truncateFile(path string) func(int64) error {
	return func(size int64) error {
		if fi, err := os.Stat(path); err != nil || fi.Size() <= size {
			return err
		}
		return os.Truncate(path, size)
	}
}

// closeWatch closes a watch's channel, unless the driver was told to
// forget it.
func (d *Driver) closeWatch(ch chan<- hypervisor.Status) {
	if !d.breaks(ViolationWatchNeverCloses) {
		close(ch)
	}
}

// firstWatched is the first status a watch delivers.
func (d *Driver) firstWatched(st hypervisor.Status) hypervisor.Status {
	if d.breaks(ViolationWatchStaleFirst) {
		st.CurrentSnapshot = ""
	}
	return st
}

// truncateGuest truncates the guest file guestPath of root to size.
func truncateGuest(root *os.Root, guestPath string) func(int64) error {
	return func(size int64) error {
		f, err := root.OpenFile(guestRel(guestPath), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || fi.Size() <= size {
			return err
		}
		return f.Truncate(size)
	}
}

// execHidden reports whether Exec answers unsupported because the driver
// hides guest.exec and the VM is not running (undeclared-exec).
func (d *Driver) execHidden(ctx context.Context, name string) bool {
	if !d.breaks(ViolationUndeclaredExec) {
		return false
	}
	st, err := d.Status(ctx, name)
	return err == nil && st.Power != hypervisor.PowerRunning
}

// guestOff is the answer to a guest operation on a VM that is not running.
func (d *Driver) guestOff(op, name string) error {
	if d.breaks(ViolationGuestOffFailed) {
		return hypervisor.NewError(hypervisor.CodeFailed, op, name, "Machine '%s' is not currently running.", name)
	}
	return hypervisor.NewError(hypervisor.CodeInvalidState, op, name, "Machine '%s' is not currently running.", name)
}

// watchFailed is the answer to a watch that cannot start because of err.
func (d *Driver) watchFailed(err error) (<-chan hypervisor.Status, error) {
	if d.breaks(ViolationWatchEmptyStream) && hypervisor.IsNotFound(err) {
		ch := make(chan hypervisor.Status)
		close(ch)
		return ch, nil
	}
	return nil, err
}
