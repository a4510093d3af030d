package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Stop brings the VM off and its session free: the VM's stop ladder (or
// the one method given WithMethod), then release confirmation.
func (m *Manager) Stop(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	o, release, err := m.begin(ctx, "stop", vm, opts)
	defer release()
	if err != nil {
		return o.finish(ctx, err)
	}
	return o.finish(ctx, o.stopAndRelease(ctx))
}

// Unlock frees a session that outlived the VM: it waits for the release,
// then unlocks actively (§6). The VM must be off.
func (m *Manager) Unlock(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	o, release, err := m.begin(ctx, "unlock", vm, opts)
	defer release()
	if err != nil {
		return o.finish(ctx, err)
	}
	if !isOff(o.last) {
		return o.finish(ctx, hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpUnlock, vm.Name,
			"the VM is %s; stop it first (sandbox vm stop %s)", o.last.Power, vm.Name))
	}
	if !o.caps.Has(hypervisor.CapLockState) {
		o.addStep(OpStep{Name: "unlock", Outcome: "skipped",
			Detail: "the driver cannot report session locks; there is nothing to check or release"})
		o.report.fallback("the driver cannot report session locks (no " + string(hypervisor.CapLockState) + ")")
		return o.finish(ctx, nil)
	}
	if isUnlocked(o.last) {
		o.addStep(OpStep{Name: "unlock", Outcome: "already unlocked"})
		return o.finish(ctx, nil)
	}
	return o.finish(ctx, o.release(ctx))
}

// Restore stops the VM cleanly, then restores its snapshot (the configured
// one, or the one given WithSnapshot; empty is the current one), retrying
// while the session is still held, and verifies the result.
func (m *Manager) Restore(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	o, release, err := m.begin(ctx, "restore", vm, opts)
	defer release()
	if err != nil {
		return o.finish(ctx, err)
	}
	if err := o.stopAndRelease(ctx); err != nil {
		return o.finish(ctx, err)
	}
	return o.finish(ctx, o.restore(ctx, o.snapshot()))
}

// Start starts the VM, retrying while its session is still held, and
// confirms that it is starting or running.
func (m *Manager) Start(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	o, release, err := m.begin(ctx, "start", vm, opts)
	defer release()
	if err != nil {
		return o.finish(ctx, err)
	}
	s := o.settings()
	sctx, cancel := context.WithTimeout(ctx, s.StartTimeout)
	defer cancel()
	o.progress("start")
	begun := time.Now()
	attempts, err := retry(sctx, isLocked, func() error { return vm.Driver.Start(sctx, vm.Name) })
	step := OpStep{Name: "start", Deadline: s.StartTimeout, Attempts: attempts, Outcome: "done"}
	if err == nil {
		var st hypervisor.Status
		if st, err = o.status(sctx); err == nil && isOff(st) {
			err = hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, vm.Name,
				"the driver reported success but the VM is %s", st.Power)
		}
	}
	step.Duration = time.Since(begun)
	if err != nil {
		step.Outcome, step.Detail = "failed", err.Error()
	}
	o.addStep(step)
	return o.finish(ctx, err)
}

// Cleanup leaves the VM off, unlocked and, when configured, restored (§8).
// It uses the driver's native cleanup when declared, verified by status,
// and composes the outcome from the ladder, release confirmation and
// restore otherwise (or when the native cleanup fails). A failure
// quarantines the VM; a success lifts any quarantine.
func (m *Manager) Cleanup(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	// The deadline covers the wait for the lease and the first status read
	// too: a cleanup never takes longer than cleanup_timeout.
	cctx, cancel := context.WithTimeout(ctx, vm.Settings.CleanupTimeout)
	defer cancel()
	o, release, err := m.begin(cctx, "cleanup", vm, opts)
	defer release()
	if err == nil {
		err = o.cleanup(cctx, o.restoreWanted())
	}
	return o.quarantineOnFailure(ctx, err)
}

// EnsureStopped is called before every task: it refuses a quarantined VM,
// then leaves the VM off and unlocked, by native cleanup when the driver has
// one and by the ladder (down to the legacy power-off and wait) otherwise.
// A failure quarantines the VM.
func (m *Manager) EnsureStopped(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	if err := m.CheckUsable(ctx, vm); err != nil {
		return &OpReport{Operation: "ensure-stopped", VM: vm.Name, Plugin: vm.Plugin, Steps: []OpStep{}, Error: err.Error()}, err
	}
	cctx, cancel := context.WithTimeout(ctx, vm.Settings.CleanupTimeout)
	defer cancel()
	o, release, err := m.begin(cctx, "ensure-stopped", vm, opts)
	defer release()
	if err == nil {
		err = o.cleanup(cctx, false)
	}
	return o.quarantineOnFailure(ctx, err)
}

// CleanupAfter runs the complete cleanup that follows a task and returns
// the task's own error unchanged: a cleanup failure never changes a task's
// outcome. It quarantines the VM instead, and the report says why.
func (m *Manager) CleanupAfter(ctx context.Context, vm VM, taskErr error, opts ...Option) (*OpReport, error) {
	report, err := m.Cleanup(ctx, vm, opts...)
	var qf *QuarantineFailedError
	switch {
	case errors.As(err, &qf):
		m.log.Error("cleanup after task failed and the VM could not be quarantined; keep it out of service",
			"vm", vm.Name, "plugin", vm.Plugin, "error", err, "task_error", taskErr)
	case err != nil && report != nil && report.Quarantined:
		m.log.Warn("cleanup after task failed; VM quarantined, task outcome kept",
			"vm", vm.Name, "plugin", vm.Plugin, "error", err, "task_error", taskErr)
	case err != nil:
		m.log.Error("cleanup after task failed; task outcome kept",
			"vm", vm.Name, "plugin", vm.Plugin, "error", err, "task_error", taskErr)
	}
	return report, taskErr
}

// CheckUsable returns a *QuarantineError for a quarantined VM, else nil.
func (m *Manager) CheckUsable(ctx context.Context, vm VM) error {
	e, ok, err := m.quarantine.Get(ctx, vm.Key())
	if err != nil {
		return fmt.Errorf("read quarantine: %w", err)
	}
	if ok {
		return &QuarantineError{VM: vm.Name, Reason: e.Reason, Since: e.Since}
	}
	return nil
}

// Quarantine takes a VM out of service until a cleanup succeeds, for a
// caller that knows the VM was left in use (an analysis started it) when
// the cleanup that followed could not even read its state: the cleanup
// itself quarantines only a VM it got hold of.
func (m *Manager) Quarantine(ctx context.Context, vm VM, reason string) error {
	if err := m.quarantine.Mark(context.WithoutCancel(ctx), vm.Key(), reason); err != nil {
		return fmt.Errorf("could not record the quarantine of %s: %w", vm.Name, err)
	}
	m.log.Warn("VM quarantined: it will not be used until a cleanup succeeds", "vm", vm.Name, "plugin", vm.Plugin, "reason", reason)
	return nil
}

// Quarantined returns the VM's quarantine entry, if it is quarantined.
func (m *Manager) Quarantined(ctx context.Context, vm VM) (QuarantineEntry, bool, error) {
	return m.quarantine.Get(ctx, vm.Key())
}

// quarantineOnFailure quarantines the VM when a cleanup that got hold of it
// failed. A failure before that (the lease not taken, the VM not found, a
// Ctrl-C while waiting) says nothing about the VM and leaves it alone.
func (o *op) quarantineOnFailure(ctx context.Context, err error) (*OpReport, error) {
	key := o.vm.Key()
	if err != nil && (!o.begun || o.vmGone(ctx, err)) {
		return o.finish(ctx, err)
	}
	if err != nil {
		// Record the quarantine even if ctx ended: the VM is in an unknown
		// state either way.
		qctx := context.WithoutCancel(ctx)
		if qerr := o.m.quarantine.Mark(qctx, key, err.Error()); qerr != nil {
			return o.finish(ctx, &QuarantineFailedError{VM: o.vm.Name, Err: err, Quarantine: qerr})
		}
		o.report.Quarantined = true
		o.log.Warn("VM quarantined: it will not be used until a cleanup succeeds", "reason", err)
		return o.finish(ctx, err)
	}
	_, was, qerr := o.m.quarantine.Get(ctx, key)
	if qerr != nil {
		return o.finish(ctx, fmt.Errorf("cleanup succeeded but the quarantine could not be read, so whether %q may be used is unknown: %w",
			o.vm.Name, qerr))
	}
	if was {
		if qerr := o.m.quarantine.Clear(ctx, key); qerr != nil {
			return o.finish(ctx, fmt.Errorf("cleanup succeeded but the quarantine could not be lifted: %w", qerr))
		}
		o.log.Info("VM back in service: quarantine lifted")
	}
	return o.finish(ctx, nil)
}

// vmGone tells a VM that no longer exists from one whose snapshot does
// not: both answer "not found", but only the first leaves nothing to
// quarantine.
func (o *op) vmGone(ctx context.Context, err error) bool {
	if !hypervisor.IsNotFound(err) {
		return false
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.settings().StatusTimeout)
	defer cancel()
	_, serr := o.vm.Driver.Status(sctx, o.vm.Name)
	return hypervisor.IsNotFound(serr)
}

func (o *op) snapshot() string {
	if o.opts.snapshot != nil {
		return *o.opts.snapshot
	}
	return o.settings().Snapshot
}

func (o *op) restoreWanted() bool {
	if o.opts.restore != nil {
		return *o.opts.restore
	}
	if o.opts.snapshot != nil {
		return true
	}
	return o.settings().RestoreOnCleanup
}

func (o *op) ladder() []hypervisor.StopMethod {
	if o.opts.method != "" {
		return []hypervisor.StopMethod{o.opts.method}
	}
	ladder := make([]hypervisor.StopMethod, len(o.settings().StopLadder))
	for i, m := range o.settings().StopLadder {
		ladder[i] = hypervisor.StopMethod(m)
	}
	return ladder
}

func (o *op) stopAndRelease(ctx context.Context) error {
	if _, err := o.stopLadder(ctx, o.ladder()); err != nil {
		return err
	}
	return o.release(ctx)
}

// cleanup is the complete cleanup without the quarantine bookkeeping.
func (o *op) cleanup(ctx context.Context, restore bool) error {
	if !restore && o.caps.Has(hypervisor.CapLockState) && isOffAndUnlocked(o.last) {
		// Nothing to do, and the state just read proves it: asking the
		// driver would only cost it another look.
		o.addStep(OpStep{Name: "stop", Outcome: "already off", Detail: "off and unlocked; nothing sent"})
		return nil
	}
	if o.caps.Has(hypervisor.CapCleanup) && o.settings().NativeCleanup {
		err := o.native(ctx, restore)
		if err == nil || ctx.Err() != nil || hypervisor.IsNotFound(err) {
			return err
		}
		o.report.Path = PathComposed
		if !o.caps.Has(hypervisor.CapLockState) {
			o.report.Path = PathLegacy
		}
		o.fallback("the driver's native cleanup failed (%v); composing it from stop, unlock and restore", err)
	}
	if err := o.stopAndRelease(ctx); err != nil {
		return err
	}
	if !restore {
		return nil
	}
	return o.restore(ctx, o.snapshot())
}

// native runs the driver's own cleanup and verifies its result by status.
func (o *op) native(ctx context.Context, restore bool) error {
	o.report.Path = PathNative
	o.progress("native cleanup")
	begun := time.Now()
	req := hypervisor.CleanupRequest{Restore: restore, Snapshot: o.snapshot()}
	res, err := o.vm.Driver.Cleanup(ctx, o.vm.Name, req)
	for _, a := range res.Steps {
		o.report.add(OpStep{Name: "driver: " + a.Action, Duration: a.Duration, Outcome: a.Outcome})
	}
	step := OpStep{Name: "native cleanup", Duration: time.Since(begun), Outcome: "done"}
	if err != nil {
		step.Outcome, step.Detail = "failed", err.Error()
		if ctx.Err() == nil {
			// The state the driver left is where the composed cleanup
			// takes over, and what the step should show.
			if _, serr := o.status(ctx); serr != nil {
				o.addStep(step)
				return serr
			}
		}
		o.addStep(step)
		return err
	}
	st, err := o.status(ctx)
	if err != nil {
		return err
	}
	o.addStep(step)
	return o.check(ctx, time.Now(), st, restore, req.Snapshot)
}

// restore restores snapshot (empty: the current one), retrying while the
// session is held, then verifies.
func (o *op) restore(ctx context.Context, snapshot string) error {
	s := o.settings()
	name := "restore " + snapshot
	if snapshot == "" {
		name = "restore current snapshot"
		if o.haveLast && o.last.CurrentSnapshot != "" {
			name = "restore " + o.last.CurrentSnapshot + " (current)"
		}
	}
	if !o.caps.Has(hypervisor.CapRestore) {
		o.addStep(OpStep{Name: name, Outcome: "skipped", Detail: "driver lacks " + string(hypervisor.CapRestore)})
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpRestore, o.vm.Name,
			"the driver cannot restore snapshots; set restore_on_cleanup = false for this VM")
	}
	o.progress(name)
	rctx, cancel := context.WithTimeout(ctx, s.RestoreTimeout)
	defer cancel()
	if err := o.restoreUntilFree(rctx, name, snapshot); err != nil {
		return err
	}
	return o.verify(rctx, true, snapshot)
}

// verify checks by status that the VM is off, on the wanted snapshot and,
// when the driver can tell, unlocked.
func (o *op) verify(ctx context.Context, restored bool, snapshot string) error {
	begun := time.Now()
	st, err := o.status(ctx)
	if err != nil {
		return err
	}
	return o.check(ctx, begun, st, restored, snapshot)
}

// check is verify on a state already read.
func (o *op) check(ctx context.Context, begun time.Time, st hypervisor.Status, restored bool, snapshot string) error {
	var problem string
	switch {
	case !isOff(st):
		problem = fmt.Sprintf("the VM is %s, not off", st.Power)
	case restored && snapshot != "" && st.CurrentSnapshot != snapshot:
		problem = fmt.Sprintf("the current snapshot is %q, not %q", st.CurrentSnapshot, snapshot)
	}
	step := OpStep{Name: "verify", Duration: time.Since(begun), Outcome: "ok"}
	if problem != "" {
		step.Outcome, step.Detail = "failed", problem
		o.addStep(step)
		return hypervisor.NewError(hypervisor.CodeFailed, "verify", o.vm.Name, "%s after the driver reported success", problem)
	}
	o.addStep(step)
	if o.caps.Has(hypervisor.CapLockState) && !isUnlocked(st) {
		// A session still held right after a restore goes by itself; wait
		// for it like after a stop.
		return o.release(ctx)
	}
	return nil
}
