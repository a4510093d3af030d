package libvirt

import (
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// libvirt's domain states (virDomainState) and, per state, the words of its
// reasons, as `virsh domstate --reason` prints them: Raw carries them.
var (
	stateWords = map[golibvirt.DomainState]string{
		golibvirt.DomainNostate:     "no state",
		golibvirt.DomainRunning:     "running",
		golibvirt.DomainBlocked:     "idle",
		golibvirt.DomainPaused:      "paused",
		golibvirt.DomainShutdown:    "in shutdown",
		golibvirt.DomainShutoff:     "shut off",
		golibvirt.DomainCrashed:     "crashed",
		golibvirt.DomainPmsuspended: "pmsuspended",
	}
	reasonWords = map[golibvirt.DomainState][]string{
		golibvirt.DomainNostate: {"unknown"},
		golibvirt.DomainRunning: {"unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
			"migration canceled", "save canceled", "event wakeup", "crashed", "post-copy", "post-copy failed"},
		golibvirt.DomainBlocked: {"unknown"},
		golibvirt.DomainPaused: {"unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
			"from snapshot", "shutting down", "creating snapshot", "api error", "starting up", "post-copy", "post-copy failed"},
		golibvirt.DomainShutdown: {"unknown", "user"},
		golibvirt.DomainShutoff: {"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
			"from snapshot", "daemon"},
		golibvirt.DomainCrashed:     {"unknown", "panicked"},
		golibvirt.DomainPmsuspended: {"unknown"},
	}
)

// raw is libvirt's own word for a state and reason, e.g. "shut off
// (destroyed)"; numbers it has no word for (a newer libvirt) are shown as
// numbers.
func raw(state golibvirt.DomainState, reason int32) string {
	s, ok := stateWords[state]
	if !ok {
		s = fmt.Sprintf("state %d", state)
	}
	words := reasonWords[state]
	if reason >= 0 && int(reason) < len(words) {
		return s + " (" + words[reason] + ")"
	}
	return fmt.Sprintf("%s (reason %d)", s, reason)
}

// Reasons of the paused state (virDomainPausedReason) that say more than
// "paused".
const (
	pausedMigration      = 2
	pausedSave           = 3
	pausedDump           = 4
	pausedIOError        = 5
	pausedWatchdog       = 6
	pausedShuttingDown   = 8
	pausedSnapshot       = 9
	pausedAPIError       = 10
	pausedStartingUp     = 11
	pausedPostcopy       = 12
	pausedPostcopyFailed = 13
)

// Reasons of the shut off state (virDomainShutoffReason).
const (
	shutoffCrashed = 3
	shutoffSaved   = 5
)

// powerOf maps a libvirt state and reason onto the contract's power
// states. What has no word in the contract is unknown, never off (§3.2b):
// a guest suspended to RAM (pmsuspended: the QEMU process runs, the guest
// sleeps until woken), a domain migrating to another host, a state or
// reason from a newer libvirt. libvirt says shut off only once the QEMU
// process is gone (§3.2c).
func powerOf(state golibvirt.DomainState, reason int32) hypervisor.PowerState {
	switch state {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked:
		return hypervisor.PowerRunning
	case golibvirt.DomainPaused:
		switch reason {
		case pausedMigration, pausedPostcopy:
			return hypervisor.PowerUnknown
		case pausedSave, pausedDump:
			return hypervisor.PowerSaving
		case pausedSnapshot:
			return hypervisor.PowerSnapshotting
		case pausedShuttingDown:
			return hypervisor.PowerStopping
		case pausedStartingUp:
			return hypervisor.PowerStarting
		case pausedIOError, pausedWatchdog, pausedAPIError, pausedPostcopyFailed:
			return hypervisor.PowerStuck
		}
		return hypervisor.PowerPaused
	case golibvirt.DomainShutdown:
		return hypervisor.PowerStopping
	case golibvirt.DomainShutoff:
		switch reason {
		case shutoffCrashed:
			return hypervisor.PowerAborted
		case shutoffSaved:
			return hypervisor.PowerSaved
		}
		return hypervisor.PowerOff
	case golibvirt.DomainCrashed:
		// The guest crashed and on_crash keeps its QEMU process.
		return hypervisor.PowerStuck
	}
	return hypervisor.PowerUnknown
}

// active reports whether libvirt's state means the domain has a QEMU
// process.
func active(state golibvirt.DomainState) bool {
	return state != golibvirt.DomainShutoff
}
