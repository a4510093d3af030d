package conformance

import (
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// forceful are the stop methods that end a VM whatever its guest does.
var forceful = []hypervisor.Capability{hypervisor.CapStopPowerOff, hypervisor.CapStopEmergency}

// releasers are the capabilities that can release a lingering lock, which
// the suite needs to clean up after a check that made one.
var releasers = []hypervisor.Capability{hypervisor.CapUnlock, hypervisor.CapCleanup}

var statusChecks = []*check{
	{
		name: "Status/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Status of a VM that does not exist answers not found",
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpStatus) },
	},
	{
		name: "Status/PowerAndRawAreValid", clause: "§3.2a",
		summary: "Power is a normalized state, Lock a lock state, and Raw (the hypervisor's own word) is never empty",
		fn:      checkStatusValid,
	},
	{
		name: "Status/LockMatchesCapability", clause: "§3.3a",
		summary: "with status.lock the lock is locked or unlocked; without it, unknown",
		free:    true,
		fn:      checkLockMatchesCapability,
	},
	{
		name: "Status/UnmappedStateIsUnknown", clause: "§3.2b",
		summary: "a state the driver cannot map is reported unknown, never off",
		needs:   []need{needUnmapped},
		free:    true,
		fn:      checkUnmapped,
	},
	{
		name: "Status/OffMeansNoProcess", clause: "§3.2c",
		summary: "once Status reports a stopping VM off-like, no operation refuses it for still having a process",
		anyCap:  forceful,
		fn:      checkOffMeansNoProcess,
	},
	{
		name: "Status/ReportsLingeringLock", clause: "§3.3b",
		summary: "a session lock that outlives the VM process is reported locked while it is held",
		caps:    []hypervisor.Capability{hypervisor.CapLockState},
		anyCap:  releasers,
		needs:   []need{needLock},
		on:      []role{roleLock},
		fn:      checkReportsLingeringLock,
	},
}

var startChecks = []*check{
	{
		name: "Start/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Start of a VM that does not exist answers not found",
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpStart) },
	},
	{
		name: "Start/ReachesRunning", clause: "§4.1", also: []string{"§3.5"},
		summary: "right after Start returns the VM is starting or running, its state-change time moved, and it reaches running",
		fn:      checkStartReachesRunning,
	},
	{
		name: "Start/RunningIsNoOp", clause: "§4.2",
		summary: "starting a running VM succeeds and changes nothing",
		fn:      checkStartRunning,
	},
	{
		name: "Start/LingeringLockIsLocked", clause: "§4.3",
		summary: "starting a VM that is off but whose session is still held answers locked",
		anyCap:  releasers,
		needs:   []need{needLock},
		on:      []role{roleLock},
		fn:      checkStartLocked,
	},
}

// validStatus reports what is wrong with st, for §3.2 and §3.3.
func (p *probe) validStatus(when string, st hypervisor.Status) {
	p.Helper()
	if !st.Power.Valid() {
		p.Errorf("%s: power %q is not a normalized state", when, st.Power)
	}
	if st.Raw == "" {
		p.Errorf("%s: Raw is empty (power %s); it carries the hypervisor's own word", when, st.Power)
	}
	if !st.Lock.Valid() {
		p.Errorf("%s: lock %q is not locked, unlocked or unknown", when, st.Lock)
	}
}

func checkStatusValid(p *probe) {
	vm := p.vm()
	p.validStatus("off", p.status(vm))
	if !p.ok(p.retry(func() error { return p.d().Start(p.ctx, vm) }), "start") {
		return
	}
	p.validStatus("right after start", p.status(vm))
	p.validStatus("running", p.waitFor(vm, "running", isRunning))
}

func checkLockMatchesCapability(p *probe) {
	st := p.status(p.vm())
	if p.has(hypervisor.CapLockState) {
		if st.Lock != hypervisor.LockLocked && st.Lock != hypervisor.LockUnlocked {
			p.Errorf("lock is %q; with %s it is locked or unlocked", st.Lock, hypervisor.CapLockState)
		}
		return
	}
	if st.Lock != hypervisor.LockUnknown {
		p.Errorf("lock is %q; without %s it is unknown", st.Lock, hypervisor.CapLockState)
	}
}

func checkUnmapped(p *probe) {
	st := p.status(p.s.target.UnmappedVM)
	if st.Power != hypervisor.PowerUnknown {
		p.Errorf("VM %q in a state the driver has no word for is reported %q (raw %q), want %q",
			p.s.target.UnmappedVM, st.Power, st.Raw, hypervisor.PowerUnknown)
	}
	if st.Raw == "" {
		p.Errorf("Raw is empty; it carries the hypervisor's own word for the state")
	}
}

// checkStartReachesRunning starts a VM at its baseline: Status must say
// starting or running as soon as Start returned, with a state-change time
// later than before, and the VM must get to running.
func checkStartReachesRunning(p *probe) {
	vm := p.vm()
	before := p.status(vm)
	if !p.ok(p.retry(func() error { return p.d().Start(p.ctx, vm) }), "start") {
		return
	}
	st := p.status(vm)
	if st.Power != hypervisor.PowerStarting && st.Power != hypervisor.PowerRunning {
		p.Errorf("right after Start returned, the VM is %s; want starting or running", describe(st))
	}
	if !before.StateChanged.IsZero() && !st.StateChanged.IsZero() && !st.StateChanged.After(before.StateChanged) {
		p.Errorf("the VM went from %s to %s, yet its state-change time stayed %s (§3.5)",
			before.Power, st.Power, st.StateChanged.Format(time.RFC3339Nano))
	}
	p.waitFor(vm, "running", isRunning)
}

// checkOffMeansNoProcess acts on the first off-like status after a stop
// with an operation that the contract makes answer invalid state only for
// a VM that still has a process. A driver that reports off too early is
// caught in the act.
func checkOffMeansNoProcess(p *probe) {
	vm := p.vm()
	p.running(vm)
	m := p.s.forcefulStop()
	if !p.ok(p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }), "stop %s", m) {
		return
	}
	st := p.waitFor(vm, "off", isOff)
	var err error
	var op string
	switch {
	case p.has(hypervisor.CapUnlock):
		op, err = "Unlock", p.d().Unlock(p.ctx, vm)
	case p.has(hypervisor.CapRestore) && p.snapshot() != "":
		op, err = "Restore", p.d().Restore(p.ctx, vm, p.snapshot())
	default:
		op, err = "Start", p.d().Start(p.ctx, vm)
	}
	if err != nil && hypervisor.CodeOf(err) == hypervisor.CodeInvalidState {
		p.Errorf("Status reported %s, but %s right after answered invalid state, the answer for a VM that still has a process: "+
			"the VM was not off yet (%v)", describe(st), op, err)
	}
}

func checkReportsLingeringLock(p *probe) {
	vm := p.lingering()
	st := p.status(vm)
	if st.Lock == hypervisor.LockLocked {
		p.Logf("off and locked: %s", describe(st))
		return
	}
	err := p.d().Start(p.ctx, vm)
	switch {
	case hypervisor.IsLocked(err):
		p.Errorf("Status reports %s, but the session is still held: Start answers %v", describe(st), err)
	case err == nil:
		p.Skipf("LockVM %q started right after its stop: it has no lingering lock to report", vm)
	default:
		p.Errorf("Status reports %s; Start answers %v", describe(st), err)
	}
}

func checkStartRunning(p *probe) {
	vm := p.vm()
	before := p.running(vm)
	if !p.ok(p.d().Start(p.ctx, vm), "Start of a running VM") {
		return
	}
	after := p.status(vm)
	if after.Power != hypervisor.PowerRunning {
		p.Errorf("after Start of a running VM, it is %s", describe(after))
	}
	if !before.StateChanged.IsZero() && !after.StateChanged.Equal(before.StateChanged) {
		p.Errorf("Start of a running VM changed its state at %s (it had changed last at %s)", after.StateChanged, before.StateChanged)
	}
}

func checkStartLocked(p *probe) {
	vm := p.lingering()
	p.code(p.d().Start(p.ctx, vm), hypervisor.CodeLocked, "Start of %q, off with its session still held", vm)
}
