package hypervisor

import "time"

// PowerState is the normalized power state of a VM. Drivers map their
// hypervisor's own states onto these values and keep the original word in
// Status.Raw (§3.2).
type PowerState string

// The normalized power states.
const (
	// PowerOff means no VM process exists and no saved state will be resumed.
	PowerOff PowerState = "off"
	// PowerSaved means no VM process exists; the next start resumes a saved state.
	PowerSaved PowerState = "saved"
	// PowerAborted means the VM process died or was killed.
	PowerAborted PowerState = "aborted"
	// PowerStarting means the VM process is being created.
	PowerStarting PowerState = "starting"
	// PowerRunning means the VM process runs the guest.
	PowerRunning PowerState = "running"
	// PowerPaused means the VM process exists but the guest is paused.
	PowerPaused PowerState = "paused"
	// PowerStopping means the VM process is powering down.
	PowerStopping PowerState = "stopping"
	// PowerSaving means the VM process is writing its state to disk.
	PowerSaving PowerState = "saving"
	// PowerRestoring means a snapshot or saved state is being restored.
	PowerRestoring PowerState = "restoring"
	// PowerSnapshotting means a snapshot is being taken or deleted.
	PowerSnapshotting PowerState = "snapshotting"
	// PowerStuck means the guest crashed inside a live VM process
	// (VirtualBox's "guru meditation").
	PowerStuck PowerState = "stuck"
	// PowerUnknown means the driver could not map the hypervisor's state.
	// It is never a synonym for off (§3.2).
	PowerUnknown PowerState = "unknown"
)

// PowerStates lists every normalized state, for validation and documentation.
var PowerStates = []PowerState{
	PowerOff, PowerSaved, PowerAborted, PowerStarting, PowerRunning, PowerPaused,
	PowerStopping, PowerSaving, PowerRestoring, PowerSnapshotting, PowerStuck, PowerUnknown,
}

// IsOff reports whether no VM process exists: off, saved or aborted. These
// are the states a stop waits for and the states restore requires.
func (p PowerState) IsOff() bool {
	return p == PowerOff || p == PowerSaved || p == PowerAborted
}

// Valid reports whether p is one of the normalized states.
func (p PowerState) Valid() bool {
	for _, s := range PowerStates {
		if p == s {
			return true
		}
	}
	return false
}

// LockState is the state of the hypervisor's session lock on a VM. A VM
// that is off but still locked cannot be restored or started; that lingering
// lock is the error sandbox exists to handle.
type LockState string

// The lock states.
const (
	// LockUnlocked means nothing holds the VM; any operation may take it.
	LockUnlocked LockState = "unlocked"
	// LockLocked means a process (the VM process, another client, or a session
	// still being torn down) holds the VM.
	LockLocked LockState = "locked"
	// LockUnknown is reported by drivers without CapLockState (§3.3).
	LockUnknown LockState = "unknown"
)

// Valid reports whether l is one of the lock states.
func (l LockState) Valid() bool {
	return l == LockUnlocked || l == LockLocked || l == LockUnknown
}

// Status is a snapshot of one VM's state, as returned by Driver.Status.
type Status struct {
	// VM is the VM's name as the driver knows it.
	VM string `json:"vm"`
	// Power is the normalized power state.
	Power PowerState `json:"power"`
	// Raw is the hypervisor's own word for the state (for VirtualBox the
	// VMState value, e.g. "gurumeditation"). Never empty.
	Raw string `json:"raw"`
	// Lock is the session lock state; LockUnknown without CapLockState.
	Lock LockState `json:"lock"`
	// CurrentSnapshot names the snapshot the VM's current state descends
	// from; empty when the VM has no snapshots.
	CurrentSnapshot string `json:"current_snapshot,omitempty"`
	// StateChanged is when Power last changed; zero when the hypervisor does
	// not say.
	StateChanged time.Time `json:"state_changed,omitzero"`
}

// VM is one entry of Driver.ListVMs.
type VM struct {
	// Name is what every other operation takes to address the VM.
	Name string `json:"name"`
	// ID is the hypervisor's stable identifier (a UUID for VirtualBox), or
	// empty when the hypervisor has none.
	ID string `json:"id,omitempty"`
	// Power is the state if the driver learned it while listing, else
	// PowerUnknown; listing never takes a session lock to find out (§2.2).
	Power PowerState `json:"power"`
}
