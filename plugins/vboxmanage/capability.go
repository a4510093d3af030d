package vboxmanage

import (
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/parser"
)

// capabilitiesFor decides what the driver can promise on a VirtualBox
// version. Watch is never declared: VBoxManage has no state-change events,
// and polling belongs to the core, which knows when to stop.
//
//   - 5.1 and later: everything else, including emergency stop
//     (`startvm --type emergencystop`, first seen in 5.1).
//   - 5.0: the same without emergency stop; Unlock can only wait for the
//     VM process to exit.
//   - 4.x: the legacy set. It names the session key differently, uses
//     `guestcontrol exec` and has no emergency stop, so neither lock state
//     nor guest operations are promised.
//
// Guest operations are declared only when guest credentials are
// configured, since without them every one would fail.
func capabilitiesFor(v parser.Version, guest bool) hypervisor.Capabilities {
	if v.Major < 5 {
		return hypervisor.NewCapabilities(hypervisor.CapList, hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapRestore)
	}
	caps := []hypervisor.Capability{
		hypervisor.CapList, hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapUnlock,
		hypervisor.CapRestore, hypervisor.CapCleanup, hypervisor.CapLockState,
	}
	if v.AtLeast(5, 1) {
		caps = append(caps, hypervisor.CapStopEmergency)
	}
	if guest {
		caps = append(caps, hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec, hypervisor.CapGuestCopyOut)
	}
	return hypervisor.NewCapabilities(caps...)
}
