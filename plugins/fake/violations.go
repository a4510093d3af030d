package fake

import (
	"context"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Violation is one rule of the contract the fake can be told to break, so
// that the conformance suite (sdk/conformance) can show that it catches a
// driver with that bug, and catches nothing else. Each names the clause it
// breaks. They exist for tests of the suite; a fake that breaks none is
// the reference driver.
type Violation string

// The violations, set with violations = ["early-off", ...].
const (
	// ViolationEarlyOff: Status and Watch report a VM as off (or aborted)
	// as soon as a stop is under way, while its process still exists
	// (§3.2: a VM is only off when the hypervisor says so).
	ViolationEarlyOff Violation = "early-off"
	// ViolationForgetLock: Status and Watch report a VM unlocked as soon as
	// its process is gone, while its session is still held (§3.3).
	ViolationForgetLock Violation = "forget-lock"
	// ViolationIgnoreDeadlines: operations run to their end whatever their
	// context says; the caller still gets its answer at its deadline from
	// the wire, but the work goes on without it (§12.1).
	ViolationIgnoreDeadlines Violation = "ignore-deadlines"
	// ViolationUnsupportedUnlock: unlock is declared, yet Unlock answers
	// unsupported (§1.2).
	ViolationUnsupportedUnlock Violation = "unsupported-unlock"
	// ViolationFailedNotFound: a snapshot that does not exist answers
	// failed instead of not found (§7.1).
	ViolationFailedNotFound Violation = "failed-not-found"
	// ViolationUnknownAsOff: a state the driver has no word for (raw_state)
	// is reported off instead of unknown (§3.2).
	ViolationUnknownAsOff Violation = "unknown-as-off"
	// ViolationStopOffFails: stopping an off-like VM answers invalid state
	// instead of succeeding (§5.2).
	ViolationStopOffFails Violation = "stop-off-fails"
	// ViolationExecExitError: a command's non-zero exit status is answered
	// as an error instead of a result (§9.2).
	ViolationExecExitError Violation = "exec-exit-error"
	// ViolationCleanupRestoresAgain: Cleanup restores a VM that is already
	// clean (§8.2).
	ViolationCleanupRestoresAgain Violation = "cleanup-restores-again"
	// ViolationWatchSilent: a watch delivers the current status and then
	// nothing, whatever changes (§10.1).
	ViolationWatchSilent Violation = "watch-silent"
)

// Violations lists every violation the fake knows.
var Violations = []Violation{
	ViolationEarlyOff, ViolationForgetLock, ViolationIgnoreDeadlines, ViolationUnsupportedUnlock,
	ViolationFailedNotFound, ViolationUnknownAsOff, ViolationStopOffFails, ViolationExecExitError,
	ViolationCleanupRestoresAgain, ViolationWatchSilent,
}

// breaks reports whether the driver was told to break rule v.
func (d *Driver) breaks(v Violation) bool { return d.violations[v] }

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
	return st
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

// resolveSnapshot is vm.resolveSnapshot, with the failed-not-found
// violation applied.
func (d *Driver) resolveSnapshot(v *vm, op, snapshot string) (string, error) {
	snap, err := v.resolveSnapshot(op, snapshot)
	if err != nil && d.breaks(ViolationFailedNotFound) && hypervisor.IsNotFound(err) {
		return "", hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "Snapshot operation failed")
	}
	return snap, err
}
