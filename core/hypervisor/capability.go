package hypervisor

import (
	"slices"
	"strings"
)

// Capability names one optional behaviour a driver declares in Info. Status
// and Start are not capabilities: every driver has them.
//
// Capabilities are strings on the wire so that a newer driver can declare
// one an older host has never heard of; the host keeps and shows it.
type Capability string

// The capabilities of contract version 2.
const (
	// CapList: ListVMs enumerates the VMs (§2).
	CapList Capability = "list"
	// CapStopACPI: Stop with StopACPI asks the guest to shut down (§5).
	CapStopACPI Capability = "stop.acpi"
	// CapStopPowerOff: Stop with StopPowerOff cuts the VM's power (§5).
	CapStopPowerOff Capability = "stop.poweroff"
	// CapStopEmergency: Stop with StopEmergency kills the VM process (§5).
	CapStopEmergency Capability = "stop.emergency"
	// CapUnlock: Unlock releases a session that outlived its VM (§6).
	CapUnlock Capability = "unlock"
	// CapRestore: Restore returns a VM to a snapshot (§7).
	CapRestore Capability = "snapshot.restore"
	// CapCleanup: Cleanup is a driver-native complete cleanup (§8).
	CapCleanup Capability = "cleanup"
	// CapLockState: Status reports Lock as locked or unlocked, never unknown (§3.3).
	CapLockState Capability = "status.lock"
	// CapWatch: Watch streams state changes (§10).
	CapWatch Capability = "watch"
	// CapGuestCopyIn: CopyIn copies a host file into the guest (§9.1).
	CapGuestCopyIn Capability = "guest.copy_in"
	// CapGuestExec: Exec runs a command in the guest (§9.2).
	CapGuestExec Capability = "guest.exec"
	// CapGuestCopyOut: CopyOut copies a guest file to the host (§9.3).
	CapGuestCopyOut Capability = "guest.copy_out"
)

// AllCapabilities is the set of every capability of this contract version.
var AllCapabilities = NewCapabilities(
	CapList, CapStopACPI, CapStopPowerOff, CapStopEmergency, CapUnlock, CapRestore,
	CapCleanup, CapLockState, CapWatch, CapGuestCopyIn, CapGuestExec, CapGuestCopyOut,
)

// V1Capabilities is what a plugin speaking protocol version 1 can do: the
// operations of the legacy controller (hard power-off and restore, besides
// the always-present status and start). The host assigns this set to every
// v1 plugin; a v1 plugin cannot declare capabilities itself (§1.3).
var V1Capabilities = NewCapabilities(CapStopPowerOff, CapRestore)

// Capabilities is a set of capabilities kept as a sorted, duplicate-free list
// so that it prints and serializes the same way every time.
type Capabilities []Capability

// NewCapabilities returns the set of the given capabilities.
func NewCapabilities(caps ...Capability) Capabilities {
	c := slices.Clone(caps)
	slices.Sort(c)
	return slices.Compact(c)
}

// Has reports whether c contains capability x.
func (c Capabilities) Has(x Capability) bool {
	return slices.Contains(c, x)
}

// String joins the capabilities with commas.
func (c Capabilities) String() string {
	s := make([]string, len(c))
	for i, x := range c {
		s[i] = string(x)
	}
	return strings.Join(s, ",")
}

// StopMethod is how Stop ends a VM. The methods form the rungs of the core's
// stop ladder, gentlest first.
type StopMethod string

// The stop methods.
const (
	// StopACPI presses the virtual power button; the guest decides whether
	// and when to shut down.
	StopACPI StopMethod = "acpi"
	// StopPowerOff cuts the power: the guest gets no say, the VM process
	// tears down and releases its session.
	StopPowerOff StopMethod = "poweroff"
	// StopEmergency kills the VM process outright. It is the last resort
	// for a VM process that hangs in stopping or holds a session forever.
	StopEmergency StopMethod = "emergency"
)

// StopMethods lists the stop methods, gentlest first.
var StopMethods = []StopMethod{StopACPI, StopPowerOff, StopEmergency}

// Capability returns the capability a driver declares to support m.
func (m StopMethod) Capability() Capability {
	switch m {
	case StopACPI:
		return CapStopACPI
	case StopPowerOff:
		return CapStopPowerOff
	case StopEmergency:
		return CapStopEmergency
	}
	return ""
}

// Valid reports whether m is a known stop method.
func (m StopMethod) Valid() bool { return m.Capability() != "" }

// Info describes a driver: who it is and what it can do (§1).
type Info struct {
	// Name is the driver's short name, e.g. "vboxmanage".
	Name string `json:"name"`
	// Version is the driver's own version.
	Version string `json:"version"`
	// ContractVersion is the version of this contract the driver implements.
	ContractVersion int `json:"contract_version"`
	// Hypervisor describes the hypervisor the driver found, e.g.
	// "VirtualBox 7.0.14r161095"; empty if the driver has not probed it.
	Hypervisor string `json:"hypervisor,omitempty"`
	// Capabilities is what the driver can do beyond status and start.
	Capabilities Capabilities `json:"capabilities"`
}
