package conformance

import (
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

var anyStop = []hypervisor.Capability{hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapStopEmergency}

var stopChecks = []*check{
	{
		name: "Stop/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Stop of a VM that does not exist answers not found, by every declared method",
		anyCap:  anyStop,
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpStop) },
	},
	{
		name: "Stop/OffLikeIsNoOp", clause: "§5.2a",
		summary: "stopping an off-like VM, by every declared method, succeeds and changes nothing",
		anyCap:  anyStop,
		fn:      checkStopOff,
	},
	{
		name: "Stop/ACPI", clause: "§5.1b",
		summary: "the power button is accepted on a running VM, which shuts down unless its guest ignores it",
		caps:    []hypervisor.Capability{hypervisor.CapStopACPI},
		fn:      checkStopACPI,
	},
	{
		name: "Stop/PowerOff", clause: "§5.1a", also: []string{"§5.1b"},
		summary: "right after a power-off of a running VM returns, the VM is off-like or stopping, and it gets off-like",
		caps:    []hypervisor.Capability{hypervisor.CapStopPowerOff},
		fn:      func(p *probe) { p.stopBy(hypervisor.StopPowerOff) },
	},
	{
		name: "Stop/Emergency", clause: "§5.1b",
		summary: "an emergency stop is accepted on a running VM, which then gets off-like",
		caps:    []hypervisor.Capability{hypervisor.CapStopEmergency},
		fn:      func(p *probe) { p.stopBy(hypervisor.StopEmergency) },
	},
	{
		name: "Stop/EmergencyOnLingeringLock", clause: "§5.2b",
		summary: "an emergency stop of a VM that is off but whose session is still held releases it, or answers locked when no VM process holds it",
		caps:    []hypervisor.Capability{hypervisor.CapStopEmergency},
		anyCap:  releasers,
		needs:   []need{needLock},
		on:      []role{roleLock},
		fn:      checkEmergencyLingering,
	},
	{
		name: "Stop/Ladder", clause: "§5.5",
		summary: "the declared stop methods sent in turn, gentlest first, each while the VM is still on its way off, answer success, invalid state or locked, and the VM ends off-like and unlocked",
		anyCap:  anyStop,
		fn:      checkLadder,
	},
}

var unlockChecks = []*check{
	{
		name: "Unlock/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Unlock of a VM that does not exist answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapUnlock},
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpUnlock) },
	},
	{
		name: "Unlock/UnlockedIsNoOp", clause: "§6.2",
		summary: "unlocking an unlocked VM succeeds at once",
		caps:    []hypervisor.Capability{hypervisor.CapUnlock},
		fn:      checkUnlockUnlocked,
	},
	{
		name: "Unlock/RunningIsInvalidState", clause: "§6.1",
		summary: "unlocking a VM that has a process answers invalid state",
		caps:    []hypervisor.Capability{hypervisor.CapUnlock},
		fn:      checkUnlockRunning,
	},
	{
		name: "Unlock/ReleasesLingeringLock", clause: "§6.3",
		summary: "Unlock releases a session lock that outlived the VM process; Status then says unlocked and the VM starts",
		caps:    []hypervisor.Capability{hypervisor.CapUnlock},
		needs:   []need{needLock},
		on:      []role{roleLock},
		fn:      checkUnlockLingering,
	},
}

func checkStopOff(p *probe) {
	vm := p.vm()
	before := p.status(vm)
	for _, m := range p.s.stopMethods() {
		if !p.ok(p.d().Stop(p.ctx, vm, m), "Stop(%s) of a VM that is %s", m, before.Power) {
			continue
		}
		after := p.status(vm)
		if after.Power != before.Power || !after.StateChanged.Equal(before.StateChanged) || after.CurrentSnapshot != before.CurrentSnapshot {
			p.Errorf("Stop(%s) of an off-like VM changed it: %s, then %s", m, describe(before), describe(after))
		}
	}
}

func checkStopACPI(p *probe) {
	vm := p.vm()
	p.running(vm)
	if !p.ok(p.retry(func() error { return p.d().Stop(p.ctx, vm, hypervisor.StopACPI) }), "Stop(acpi) of a running VM") {
		return
	}
	st := p.status(vm)
	if !st.Power.IsOff() && st.Power != hypervisor.PowerStopping && st.Power != hypervisor.PowerRunning {
		p.Errorf("right after Stop(acpi) the VM is %s; want running (the guest may ignore the button), stopping or off-like", describe(st))
		return
	}
	if st, err := p.s.waitFor(p.ctx, vm, p.s.timing.ACPI, "off", isOff); err != nil {
		p.Logf("the guest ignored the power button for %s, as §5.1 allows: %s", p.s.timing.ACPI, describe(st))
	}
}

// stopBy stops a running VM by a forceful method and waits for it to be
// off-like.
func (p *probe) stopBy(m hypervisor.StopMethod) {
	p.Helper()
	vm := p.vm()
	p.running(vm)
	if !p.ok(p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }), "Stop(%s) of a running VM", m) {
		return
	}
	if m == hypervisor.StopPowerOff {
		if st := p.status(vm); !st.Power.IsOff() && st.Power != hypervisor.PowerStopping {
			p.Errorf("right after Stop(%s) returned, the VM is %s; want off-like or stopping (§5.1a)", m, describe(st))
		}
	}
	st := p.waitFor(vm, "off", isOff)
	p.Logf("off: %s", describe(st))
}

// checkEmergencyLingering sends an emergency stop to LockVM, off with its
// session held: the driver must release the session (a VM process held
// it) or answer locked (another client does), never claim success and
// leave it held.
func checkEmergencyLingering(p *probe) {
	vm := p.lingering()
	err := p.d().Stop(p.ctx, vm, hypervisor.StopEmergency)
	switch {
	case hypervisor.IsLocked(err):
		p.Logf("answered locked: no VM process holds the session (%v)", err)
		return
	case err != nil:
		p.fatalf("Stop(emergency) of %q, off with its session still held, answered %v; want success or locked", vm, err)
	}
	if p.has(hypervisor.CapLockState) {
		if st, werr := p.s.waitFor(p.ctx, vm, p.s.timing.Settle, "unlocked", isUnlocked); werr != nil {
			p.Errorf("Stop(emergency) of %q succeeded, yet the session is still held: %s", vm, describe(st))
		}
		return
	}
	if err := p.d().Start(p.ctx, vm); hypervisor.IsLocked(err) {
		p.Errorf("Stop(emergency) of %q succeeded, yet Start answers %v", vm, err)
	}
}

// checkLadder climbs the declared stop methods, gentlest first, without
// giving any time to take effect: each rung after the first reaches a VM
// already on its way off, which a driver may refuse only with invalid
// state or locked (§5.5). The VM must end off-like and unlocked.
func checkLadder(p *probe) {
	vm := p.vm()
	p.running(vm)
	for _, m := range p.s.stopMethods() {
		err := p.retry(func() error { return p.d().Stop(p.ctx, vm, m) })
		if err == nil {
			continue
		}
		st := p.status(vm)
		code := hypervisor.CodeOf(err)
		if code != hypervisor.CodeInvalidState && code != hypervisor.CodeLocked {
			p.fatalf("rung %s, VM %s: answered %s, want success, invalid state or locked: %v", m, describe(st), code, err)
		}
		p.Logf("rung %s refused while the VM is %s: %v", m, st.Power, err)
	}
	st := p.waitFor(vm, "off", isOff)
	p.Logf("off: %s", describe(st))
	p.unlockedAfterStop(vm)
}

// unlockedAfterStop does what the core does once a VM is off: wait for its
// session to be torn down, by state when the driver reports locks, and
// unlock it if it lingers.
func (p *probe) unlockedAfterStop(vm string) {
	p.Helper()
	if p.has(hypervisor.CapLockState) {
		st, err := p.s.waitFor(p.ctx, vm, p.s.timing.Settle, "unlocked", isUnlocked)
		if err == nil {
			return
		}
		if !p.has(hypervisor.CapUnlock) {
			p.fatalf("the session lock outlived the VM process by %s: %s", p.s.timing.Settle, describe(st))
		}
	}
	if p.has(hypervisor.CapUnlock) {
		p.ok(p.retry(func() error { return p.d().Unlock(p.ctx, vm) }), "Unlock of the stopped VM")
	}
}

// checkUnlockUnlocked unlocks an unlocked VM, which must succeed at once.
// A busy machine may make any call slow, and cannot make a driver that
// waits for something quick: so a slow answer is timed again, up to three
// times, and the quickest counts.
func checkUnlockUnlocked(p *probe) {
	vm := p.vm()
	took := time.Duration(1<<63 - 1)
	for range 3 {
		var err error
		t := timed(func() { err = p.d().Unlock(p.ctx, vm) })
		if !p.ok(err, "Unlock of an unlocked VM") {
			return
		}
		if took = min(took, t); took <= p.s.timing.Margin {
			break
		}
	}
	if took > p.s.timing.Margin {
		p.Errorf("Unlock of an unlocked VM took %s at best, in three tries; it returns at once", took.Round(time.Millisecond))
	}
	if p.has(hypervisor.CapLockState) {
		if st := p.status(vm); st.Lock != hypervisor.LockUnlocked {
			p.Errorf("after Unlock the VM is %s", describe(st))
		}
	}
}

func checkUnlockRunning(p *probe) {
	vm := p.vm()
	p.running(vm)
	p.code(p.d().Unlock(p.ctx, vm), hypervisor.CodeInvalidState, "Unlock of a running VM")
}

func checkUnlockLingering(p *probe) {
	vm := p.lingering()
	if !p.ok(p.d().Unlock(p.ctx, vm), "Unlock of %q, off with its session still held", vm) {
		return
	}
	if p.has(hypervisor.CapLockState) {
		if st := p.status(vm); st.Lock != hypervisor.LockUnlocked {
			p.Errorf("after Unlock returned, the VM is %s; want unlocked", describe(st))
		}
	}
	p.ok(p.d().Start(p.ctx, vm), "Start right after Unlock returned")
}
