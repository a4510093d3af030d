package conformance

import (
	"bytes"
	"os"
	"path/filepath"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

var restoreChecks = []*check{
	{
		name: "Restore/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Restore of a VM that does not exist answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpRestore) },
	},
	{
		name: "Restore/UnknownSnapshotIsNotFound", clause: "§7.1b",
		summary: "restoring a snapshot the VM does not have answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		fn:      checkRestoreMissing,
	},
	{
		name: "Restore/NamedSnapshot", clause: "§7.3", also: []string{"§3.4"},
		summary: "after a run, right after restoring the snapshot returns, the VM is off-like with that snapshot current",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot},
		fn:      checkRestoreNamed,
	},
	{
		name: "Restore/OtherSnapshot", clause: "§7.3", also: []string{"§3.4"},
		summary: "restoring a snapshot other than the current one really goes there: the reported snapshot, and the guest's disk where guest operations exist, follow each restore",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot, needOther},
		fn:      checkRestoreOther,
	},
	{
		name: "Restore/CurrentSnapshot", clause: "§7.1a",
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
		name: "Restore/RunningIsInvalidState", clause: "§7.2a",
		summary: "restoring a VM that has a process answers invalid state",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needSnapshot},
		fn:      checkRestoreRunning,
	},
	{
		name: "Restore/LingeringLockIsLocked", clause: "§7.2b",
		summary: "restoring a VM that is off but whose session is still held answers locked",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		anyCap:  releasers,
		needs:   []need{needLock},
		on:      []role{roleLock},
		fn:      checkRestoreLocked,
	},
}

var cleanupChecks = []*check{
	{
		name: "Cleanup/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Cleanup of a VM that does not exist answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup},
		free:    true,
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
		name: "Cleanup/UnknownSnapshotIsNotFound", clause: "§7.1b",
		summary: "a cleanup asked to restore a snapshot the VM does not have answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup, hypervisor.CapRestore},
		fn:      checkCleanupMissingSnapshot,
	},
	{
		name: "Cleanup/ReleasesLingeringLock", clause: "§8.1",
		summary: "Cleanup releases a session lock that outlived the VM process; the VM then starts",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup},
		needs:   []need{needLock},
		on:      []role{roleLock},
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

// checkRestoreNamed runs the VM, stops it and restores its snapshot: Status
// must say where the restore went as soon as it returned.
func checkRestoreNamed(p *probe) {
	vm, snap := p.vm(), p.snapshot()
	p.running(vm)
	p.stopped(vm)
	if !p.ok(p.retry(func() error { return p.d().Restore(p.ctx, vm, snap) }), "restore %q", snap) {
		return
	}
	st := p.status(vm)
	if !st.Power.IsOff() || st.CurrentSnapshot != snap {
		p.Errorf("right after Restore(%q) returned, the VM is %s; want off-like at %q", snap, describe(st), snap)
	}
}

// checkRestoreTwice restores a VM that ran, then again: the second restore,
// of a VM already clean at the snapshot, must leave it as the first did.
func checkRestoreTwice(p *probe) {
	vm, snap := p.vm(), p.snapshot()
	p.running(vm)
	p.stopped(vm)
	var after [2]hypervisor.Status
	for i := range after {
		if !p.ok(p.retry(func() error { return p.d().Restore(p.ctx, vm, snap) }), "Restore(%q), time %d", snap, i+1) {
			return
		}
		after[i] = p.waitFor(vm, "a settled state", isSettled)
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

// checkRestoreOther tells a restore of the named snapshot from one of the
// current snapshot, and a restore that only renames from one that really
// goes back: from its snapshot the VM runs and gets a marker file on its
// disk where guest operations allow, is restored to the other snapshot,
// which Status must report and where the marker must be gone, and back.
func checkRestoreOther(p *probe) {
	vm, home, other := p.vm(), p.snapshot(), p.s.target.OtherSnapshot
	marker := p.canMark()
	var mark guestMark
	if marker {
		p.guestUp()
		mark = p.mark(vm)
		p.stopped(vm)
	}
	p.restoreTo(vm, other)
	if marker {
		p.guestUp()
		if p.marked(vm, mark) {
			p.Errorf("after Restore(%q) the file %s written in the guest before it is still there: the disk was not restored", other, mark.guest)
		}
		p.stopped(vm)
	}
	p.restoreTo(vm, home)
	if !marker {
		p.Logf("the driver declares no guest operations to write a marker with; the reported snapshot and state were checked")
	}
}

// restoreTo restores vm to snapshot and checks, once the VM settled, that
// it is off-like at that snapshot.
func (p *probe) restoreTo(vm, snapshot string) {
	p.Helper()
	if !p.ok(p.retry(func() error { return p.d().Restore(p.ctx, vm, snapshot) }), "Restore(%q)", snapshot) {
		p.FailNow()
	}
	st := p.waitFor(vm, "a settled state", isSettled)
	if !st.Power.IsOff() || st.CurrentSnapshot != snapshot {
		p.fatalf("after Restore(%q) the VM is %s; want off-like with %q current", snapshot, describe(st), snapshot)
	}
}

// canMark reports whether the driver can put a file into the guest and
// tell afterwards whether it is there.
func (p *probe) canMark() bool {
	return p.has(hypervisor.CapGuestCopyIn) && (p.has(hypervisor.CapGuestExec) || p.has(hypervisor.CapGuestCopyOut))
}

// guestMark is a file the suite wrote into a guest, and what it holds.
type guestMark struct {
	guest string
	data  []byte
}

// mark writes a fresh marker file into the running, ready guest of vm and
// checks that it can be found there.
func (p *probe) mark(vm string) guestMark {
	p.Helper()
	m := guestMark{guest: p.guestPath("marker"), data: []byte("sandbox conformance marker " + token() + "\n")}
	if err := p.d().CopyIn(p.ctx, vm, p.hostFile(m.data), m.guest); err != nil {
		p.fatalf("CopyIn of a marker to %s: %v", m.guest, err)
	}
	if !p.marked(vm, m) {
		p.fatalf("the marker %s just copied into the guest cannot be found there", m.guest)
	}
	return m
}

// marked reports whether the running, ready guest of vm holds m.
func (p *probe) marked(vm string, m guestMark) bool {
	p.Helper()
	if p.has(hypervisor.CapGuestExec) {
		req := p.cat(m.guest)
		res, err := p.d().Exec(p.ctx, vm, req)
		switch {
		case err == nil:
			return res.ExitCode == 0
		case hypervisor.CodeOf(err) == hypervisor.CodeFailed:
			return false // a driver that answers a failing command with an error is §9.2b's business
		}
		p.fatalf("Exec %s %v: %v", req.Path, req.Args, err)
		return false
	}
	dst := filepath.Join(p.hostDir(), "marker")
	if err := p.d().CopyOut(p.ctx, vm, m.guest, dst); err != nil {
		if hypervisor.CodeOf(err) != hypervisor.CodeFailed && hypervisor.CodeOf(err) != hypervisor.CodeNotFound {
			p.fatalf("CopyOut of %s: %v", m.guest, err)
		}
		return false
	}
	got, err := os.ReadFile(dst)
	return err == nil && bytes.Equal(got, m.data)
}
