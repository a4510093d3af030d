package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Reconcile checks a VM for what an earlier run that crashed may have left
// behind, before the VM is used. A VM whose lease someone holds is in use,
// not left behind: Reconcile neither waits for it nor touches it, and
// answers a *LeaseHeldError (errors.Is ErrLeaseHeld). A quarantined VM is
// refused with a *QuarantineError. Otherwise, with the lease held, a VM
// left running, paused, aborted, locked, saved off its snapshot or on
// another snapshot than its own, or one whose last lease holder died
// holding it, is cleaned (restored unless restore_on_cleanup is off) and
// the report says so (Reconciled, and LeftBy for the dead holder). A VM at
// rest gets nothing: off, unlocked and on its snapshot, or saved at its
// snapshot as the restore of a snapshot taken while running leaves it
// (§7.5). A failure quarantines the VM, as a cleanup's does.
func (m *Manager) Reconcile(ctx context.Context, vm VM, opts ...Option) (*OpReport, error) {
	refuse := func(err error) (*OpReport, error) {
		return &OpReport{Operation: "reconcile", VM: vm.Name, Plugin: vm.Plugin, Steps: []OpStep{}, Error: err.Error()}, err
	}
	if err := m.CheckUsable(ctx, vm); err != nil {
		return refuse(err)
	}
	var co callOptions
	for _, opt := range opts {
		opt(&co)
	}
	left := co.left
	if !co.held {
		release, l, err := m.tryAcquire(ctx, vm)
		if err != nil {
			return refuse(err)
		}
		defer release()
		left = l
		opts = append(opts[:len(opts):len(opts)], func(o *callOptions) { o.held = true })
	}
	if co.abandoned && left == nil {
		return &OpReport{Operation: "reconcile", VM: vm.Name, Plugin: vm.Plugin, Started: time.Now(), Steps: []OpStep{{
			Name: "check", Outcome: "skipped", Detail: "no earlier process died holding its lease; its next user's check will look at it",
		}}}, nil
	}
	cctx, cancel := context.WithTimeout(ctx, vm.Settings.CleanupTimeout)
	defer cancel()
	o, release, err := m.begin(cctx, "reconcile", vm, opts)
	defer release()
	if err == nil {
		o.report.LeftBy = left
		found, detail := o.leftBehind(left)
		if found == "" {
			detail := "off, unlocked and on its snapshot; nothing to do"
			if o.last.Power == hypervisor.PowerSaved {
				detail = fmt.Sprintf("saved at its snapshot %q, as its restore left it, and unlocked; nothing to do", o.last.CurrentSnapshot)
			}
			o.addStep(OpStep{Name: "check", Outcome: "clean", Detail: detail})
			return o.finish(ctx, nil)
		}
		o.addStep(OpStep{Name: "check", Outcome: "left " + found, Detail: detail})
		o.log.Info("VM left behind by an earlier run; cleaning it", "found", found, "detail", detail)
		o.report.Reconciled = true
		err = o.cleanup(cctx, o.restoreWanted())
		if err != nil {
			o.report.Reconciled = false
		}
	}
	return o.quarantineOnFailure(ctx, err)
}

// Reconcile is Manager.Reconcile under the lease: the caller holds the VM,
// so nobody else can be using it.
func (l *Lease) Reconcile(ctx context.Context, opts ...Option) (*OpReport, error) {
	left := l.left
	return l.m.Reconcile(ctx, l.vm, append(l.with(opts), func(o *callOptions) { o.left = left })...)
}

// tryAcquire takes the VM's lease without waiting when the leases can tell
// a held lease from a free one, and returns the record of a holder that
// died holding it. Leases that cannot are waited on.
func (m *Manager) tryAcquire(ctx context.Context, vm VM) (func(), *LeaseHolder, error) {
	tl, ok := m.leases.(TryLeases)
	if !ok {
		release, err := m.acquire(ctx, "reconcile", vm)
		return release, nil, err
	}
	release, left, err := tl.TryAcquire(vm.Key())
	var held *LeaseHeldError
	switch {
	case errors.As(err, &held):
		return nil, nil, err
	case err != nil:
		return nil, nil, fmt.Errorf("reconcile %q: could not take the VM's lease: %w", vm.Name, err)
	}
	return release, left, nil
}

// savedAtRest reports whether a saved VM (found by begin) is at rest, as
// the last cleanup left it (contract §7.5): unlocked, nobody died holding
// it, restores wanted, and at the snapshot they return to. A restore of a
// snapshot taken while running leaves exactly that, and sandbox never
// saves a VM's state, so nothing of its own can have left a saved VM there
// dirty; a run that died mid-task is named by its dead lease holder.
func (o *op) savedAtRest(left *LeaseHolder) bool {
	st := o.last
	want := o.snapshot()
	return st.Lock == hypervisor.LockUnlocked && left == nil && o.restoreWanted() &&
		st.CurrentSnapshot != "" && (want == "" || st.CurrentSnapshot == want)
}

// leftBehind says what about the VM's state (found by begin) an earlier
// run left behind, with a detail for the report; "" for a clean VM.
func (o *op) leftBehind(left *LeaseHolder) (found, detail string) {
	st := o.last
	where := fmt.Sprintf("power %s (hypervisor says %q), session %s, snapshot %q", st.Power, st.Raw, st.Lock, st.CurrentSnapshot)
	if left != nil {
		where = fmt.Sprintf("its lease was held by %s, which died holding it; %s", left, where)
	}
	want := o.snapshot()
	switch {
	case st.Power == hypervisor.PowerSaved && o.savedAtRest(left):
		return "", ""
	case st.Power != hypervisor.PowerOff:
		found = string(st.Power)
	case st.Lock == hypervisor.LockLocked:
		found = "locked"
	case o.restoreWanted() && want != "" && st.CurrentSnapshot != want:
		found = fmt.Sprintf("on snapshot %q, not %q", st.CurrentSnapshot, want)
	case left != nil:
		found = "by a run that died"
	default:
		return "", ""
	}
	if found == string(hypervisor.PowerStuck) || found == string(hypervisor.PowerUnknown) {
		found = "in state " + found
	}
	return found, where
}
