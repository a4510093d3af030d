package conformance

import (
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

var restoreChecks = []*check{
	{
		name: "Restore/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Restore of a VM that does not exist answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		fn:      func(p *probe) { p.notFound(hypervisor.OpRestore) },
	},
	{
		name: "Restore/UnknownSnapshotIsNotFound", clause: "§7.1",
		summary: "restoring a snapshot the VM does not have answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		fn:      checkRestoreMissing,
	},
	{
		name: "Restore/NamedSnapshot", clause: "§7.3",
		summary: "after a run, restoring the snapshot leaves the VM off-like with that snapshot current",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot},
		fn:      func(p *probe) { p.restoreAfterRun(p.snapshot()) },
	},
	{
		name: "Restore/CurrentSnapshot", clause: "§7.1",
		summary: "an empty snapshot name restores the current snapshot",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot},
		fn:      func(p *probe) { p.restoreAfterRun("") },
	},
	{
		name: "Restore/Twice", clause: "§7.4",
		summary: "restoring twice is the same as restoring once",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot},
		fn:      checkRestoreTwice,
	},
	{
		name: "Restore/RunningIsInvalidState", clause: "§7.2",
		summary: "restoring a VM that has a process answers invalid state",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot},
		fn:      checkRestoreRunning,
	},
	{
		name: "Restore/LingeringLockIsLocked", clause: "§7.2",
		summary: "restoring a VM that is off but whose session is still held answers locked",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		anyCap:  releasers,
		needs:   []need{needLock},
		fn:      checkRestoreLocked,
	},
}

var cleanupChecks = []*check{
	{
		name: "Cleanup/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Cleanup of a VM that does not exist answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup},
		fn:      func(p *probe) { p.notFound(hypervisor.OpCleanup) },
	},
	{
		name: "Cleanup/RunningVM", clause: "§8.1",
		summary: "Cleanup of a running VM leaves it off-like, unlocked and restored, and reports the steps it took",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup},
		fn:      checkCleanupRunning,
	},
	{
		name: "Cleanup/CleanVMIsNoOp", clause: "§8.2",
		summary: "Cleanup of a clean VM does nothing and succeeds",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup},
		fn:      checkCleanupClean,
	},
	{
		name: "Cleanup/UnknownSnapshotIsNotFound", clause: "§7.1",
		summary: "a cleanup asked to restore a snapshot the VM does not have answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup, hypervisor.CapRestore},
		fn:      checkCleanupMissingSnapshot,
	},
	{
		name: "Cleanup/ReleasesLingeringLock", clause: "§8.1",
		summary: "Cleanup releases a session lock that outlived the VM process; the VM then starts",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup},
		needs:   []need{needLock},
		fn:      checkCleanupLingering,
	},
}

func checkRestoreMissing(p *probe) {
	err := p.retry(func() error { return p.d().Restore(p.ctx, p.vm(), missingSnapshot) })
	p.code(err, hypervisor.CodeNotFound, "Restore of snapshot %q, which the VM does not have", missingSnapshot)
}

// restoreAfterRun runs the VM, stops it and restores snapshot ("" for the
// current one), which must leave it off-like at the baseline snapshot.
func (p *probe) restoreAfterRun(snapshot string) {
	p.Helper()
	vm, want := p.vm(), p.snapshot()
	p.running(vm)
	p.stopped(vm)
	if !p.ok(p.retry(func() error { return p.d().Restore(p.ctx, vm, snapshot) }), "Restore(%q)", snapshot) {
		return
	}
	st := p.waitFor(vm, "off", isOff)
	if st.CurrentSnapshot != want {
		p.Errorf("after Restore(%q) the VM is %s; want the snapshot %q current", snapshot, describe(st), want)
	}
}

func checkRestoreTwice(p *probe) {
	vm, snap := p.vm(), p.snapshot()
	var after [2]hypervisor.Status
	for i := range after {
		if !p.ok(p.retry(func() error { return p.d().Restore(p.ctx, vm, snap) }), "Restore(%q), time %d", snap, i+1) {
			return
		}
		after[i] = p.status(vm)
	}
	if after[0].Power != after[1].Power || after[0].CurrentSnapshot != after[1].CurrentSnapshot {
		p.Errorf("a second restore left the VM otherwise: %s, then %s", describe(after[0]), describe(after[1]))
	}
	if !after[1].Power.IsOff() || after[1].CurrentSnapshot != snap {
		p.Errorf("after two restores of %q the VM is %s", snap, describe(after[1]))
	}
}

func checkRestoreRunning(p *probe) {
	vm := p.vm()
	p.running(vm)
	p.code(p.d().Restore(p.ctx, vm, p.snapshot()), hypervisor.CodeInvalidState, "Restore of a running VM")
}

func checkRestoreLocked(p *probe) {
	snap := p.s.vms[p.s.target.LockVM].snapshot
	if snap == "" {
		p.Skipf("LockVM %q is at no snapshot to restore", p.s.target.LockVM)
	}
	vm := p.lingering()
	p.code(p.d().Restore(p.ctx, vm, snap), hypervisor.CodeLocked, "Restore of %q, off with its session still held", vm)
}

// cleanupRequest asks for a restore of the baseline snapshot when the
// driver can restore and there is one.
func (p *probe) cleanupRequest() hypervisor.CleanupRequest {
	if p.has(hypervisor.CapRestore) && p.snapshot() != "" {
		return hypervisor.CleanupRequest{Restore: true, Snapshot: p.snapshot()}
	}
	return hypervisor.CleanupRequest{}
}

func checkCleanupRunning(p *probe) {
	vm := p.vm()
	p.running(vm)
	req := p.cleanupRequest()
	res, err := p.d().Cleanup(p.ctx, vm, req)
	if !p.ok(err, "Cleanup(%+v) of a running VM", req) {
		return
	}
	st := p.status(vm)
	if !st.Power.IsOff() || st.Lock == hypervisor.LockLocked || (req.Restore && st.CurrentSnapshot != req.Snapshot) {
		p.Errorf("after Cleanup(%+v) returned, the VM is %s", req, describe(st))
	}
	if len(res.Steps) == 0 {
		p.Errorf("Cleanup of a running VM reported no steps")
	}
	for i, s := range res.Steps {
		if s.Action == "" || s.Outcome == "" {
			p.Errorf("cleanup step %d has no action or outcome: %+v", i, s)
		}
	}
	p.Logf("steps: %+v", res.Steps)
}

func checkCleanupClean(p *probe) {
	vm := p.vm()
	req := p.cleanupRequest()
	if _, err := p.d().Cleanup(p.ctx, vm, req); !p.ok(err, "first Cleanup(%+v)", req) {
		return
	}
	before := p.status(vm)
	res, err := p.d().Cleanup(p.ctx, vm, req)
	if !p.ok(err, "Cleanup(%+v) of a clean VM", req) {
		return
	}
	if len(res.Steps) > 0 {
		p.Errorf("Cleanup of a clean VM took steps: %+v", res.Steps)
	}
	after := p.status(vm)
	if after.Power != before.Power || after.CurrentSnapshot != before.CurrentSnapshot || !after.StateChanged.Equal(before.StateChanged) {
		p.Errorf("Cleanup of a clean VM changed it: %s, then %s", describe(before), describe(after))
	}
}

func checkCleanupMissingSnapshot(p *probe) {
	_, err := p.d().Cleanup(p.ctx, p.vm(), hypervisor.CleanupRequest{Restore: true, Snapshot: missingSnapshot})
	p.code(err, hypervisor.CodeNotFound, "Cleanup restoring snapshot %q, which the VM does not have", missingSnapshot)
}

func checkCleanupLingering(p *probe) {
	vm := p.lingering()
	if _, err := p.d().Cleanup(p.ctx, vm, hypervisor.CleanupRequest{}); !p.ok(err, "Cleanup of %q, off with its session still held", vm) {
		return
	}
	st := p.status(vm)
	if !st.Power.IsOff() || st.Lock == hypervisor.LockLocked {
		p.Errorf("after Cleanup returned, the VM is %s; want off-like and unlocked", describe(st))
	}
	p.ok(p.d().Start(p.ctx, vm), "Start right after Cleanup returned")
}
