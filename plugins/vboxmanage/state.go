package vboxmanage

import (
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/parser"
)

// powerStates maps every VMState VBoxManage prints (FACTS §1.3) onto the
// contract's states.
var powerStates = map[string]hypervisor.PowerState{
	"poweroff":   hypervisor.PowerOff,
	"teleported": hypervisor.PowerOff, // the VM moved to another host; nothing runs here
	"saved":      hypervisor.PowerSaved,
	"aborted":    hypervisor.PowerAborted,
	// The VM process died while a saved state existed: it is the death
	// that matters to an operator, and both are off.
	"aborted-saved":              hypervisor.PowerAborted,
	"running":                    hypervisor.PowerRunning,
	"teleporting":                hypervisor.PowerRunning, // the guest keeps running while it is sent away
	"faulttolerantsyncing":       hypervisor.PowerRunning,
	"paused":                     hypervisor.PowerPaused,
	"teleportingpausedvm":        hypervisor.PowerPaused,
	"gurumeditation":             hypervisor.PowerStuck,
	"starting":                   hypervisor.PowerStarting,
	"teleportingin":              hypervisor.PowerStarting, // the VM process is coming up from another host
	"stopping":                   hypervisor.PowerStopping,
	"saving":                     hypervisor.PowerSaving,
	"restoring":                  hypervisor.PowerRestoring,
	"restoringsnapshot":          hypervisor.PowerRestoring,
	"livesnapshotting":           hypervisor.PowerSnapshotting,
	"onlinesnapshotting":         hypervisor.PowerSnapshotting,
	"snapshotting":               hypervisor.PowerSnapshotting,
	"deletingsnapshot":           hypervisor.PowerSnapshotting,
	"deletingsnapshotlive":       hypervisor.PowerSnapshotting,
	"deletingsnapshotlivepaused": hypervisor.PowerSnapshotting,
	// "settingup" (a machine being prepared for an offline operation) has
	// no counterpart and stays unknown, which is never mistaken for off.
}

// powerState maps a raw VMState.
func powerState(raw string) hypervisor.PowerState {
	if p, ok := powerStates[raw]; ok {
		return p
	}
	return hypervisor.PowerUnknown
}

// statusFrom builds the contract's Status from a VM's `list --long vms`
// block.
//
// The lock: a VM in any state but off-like has a process (or an offline
// operation) holding its session. An off-like VM is locked while its block
// has a "Session name:" line. This is not an inference: VBoxManageInfo.cpp
// prints the human format's "Session name:" under exactly the condition
// that prints the machine-readable SessionName (the session state is not
// Unlocked and the session has a name), so the line is there while a named
// session (the VM process still exiting, a GUI) holds the machine. A
// session held by another VBoxManage has no name and cannot be seen; the
// operation that meets it answers locked and is retried.
func statusFrom(vm string, e parser.LongEntry, lockState bool) hypervisor.Status {
	st := hypervisor.Status{
		VM:              vm,
		Raw:             e.State,
		Power:           powerState(e.State),
		StateChanged:    e.Since,
		CurrentSnapshot: e.Snapshots.CurrentName(),
		Lock:            hypervisor.LockUnknown,
	}
	switch {
	case e.Inaccessible:
		st.Raw, st.Power = "inaccessible", hypervisor.PowerUnknown
	case st.Raw == "":
		st.Raw = "unknown"
	}
	if lockState {
		st.Lock = hypervisor.LockUnlocked
		if e.HasSession || (!st.Power.IsOff() && !e.Inaccessible) {
			st.Lock = hypervisor.LockLocked
		}
	}
	return st
}
