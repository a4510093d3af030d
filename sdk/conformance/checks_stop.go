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
		fn:      func(p *probe) { p.notFound(hypervisor.OpStop) },
	},
	{
		name: "Stop/OffLikeIsNoOp", clause: "§5.2",
		summary: "stopping an off-like VM, by every declared method, succeeds and changes nothing",
		anyCap:  anyStop,
		fn:      checkStopOff,
	},
	{
		name: "Stop/ACPI", clause: "§5.1",
		summary: "the power button is accepted on a running VM, which shuts down unless its guest ignores it",
		caps:    []hypervisor.Capability{hypervisor.CapStopACPI},
		fn:      checkStopACPI,
	},
	{
		name: "Stop/PowerOff", clause: "§5.1",
		summary: "a power-off is accepted on a running VM, which then gets off-like",
		caps:    []hypervisor.Capability{hypervisor.CapStopPowerOff},
		fn:      func(p *probe) { p.stopBy(hypervisor.StopPowerOff) },
	},
	{
		name: "Stop/Emergency", clause: "§5.1",
		summary: "an emergency stop is accepted on a running VM, which then gets off-like",
		caps:    []hypervisor.Capability{hypervisor.CapStopEmergency},
		fn:      func(p *probe) { p.stopBy(hypervisor.StopEmergency) },
	},
	{
		name: "Stop/Ladder", clause: "§5.3",
		summary: "climbing the declared stop methods gentlest first, confirming by state, ends with the VM off-like and unlocked",
		anyCap:  anyStop,
		fn:      checkLadder,
	},
}

var unlockChecks = []*check{
	{
		name: "Unlock/UnknownVMIsNotFound", clause: "§11.3",
		summary: "Unlock of a VM that does not exist answers not found",
		caps:    []hypervisor.Capability{hypervisor.CapUnlock},
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
	st := p.waitFor(vm, "off", isOff)
	p.Logf("off: %s", describe(st))
}

// checkLadder does what the core does to stop a VM: each declared method in
// turn, gentlest first, each given its time to take effect by state. A rung
// may be refused because the VM is already on its way off (§5.5); the next
// rung then takes over.
func checkLadder(p *probe) {
	vm := p.vm()
	p.running(vm)
	methods := p.s.stopMethods()
	var st hypervisor.Status
	for i, m := range methods {
		last := i == len(methods)-1
		err := p.retry(func() error { return p.d().Stop(p.ctx, vm, m) })
		if err != nil {
			st = p.status(vm)
			code := hypervisor.CodeOf(err)
			refused := code == hypervisor.CodeInvalidState || code == hypervisor.CodeLocked
			if !refused || (!st.Power.IsOff() && st.Power != hypervisor.PowerStopping) {
				p.fatalf("rung %s, VM %s: %v", m, describe(st), err)
			}
			p.Logf("rung %s refused while the VM is %s (§5.5): %v", m, st.Power, err)
		}
		bound := p.s.timing.Settle
		if m == hypervisor.StopACPI && !last {
			bound = p.s.timing.ACPI
		}
		var werr error
		st, werr = p.s.waitFor(p.ctx, vm, bound, "off", isOff)
		if werr == nil {
			p.Logf("off after rung %s: %s", m, describe(st))
			break
		}
		if last {
			p.fatalf("the VM is not off after the last rung (%s): %v", m, werr)
		}
	}
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

func checkUnlockUnlocked(p *probe) {
	vm := p.vm()
	var err error
	took := timed(func() { err = p.d().Unlock(p.ctx, vm) })
	if !p.ok(err, "Unlock of an unlocked VM") {
		return
	}
	if took > p.s.timing.Margin {
		p.Errorf("Unlock of an unlocked VM took %s; it returns at once", took.Round(time.Millisecond))
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
