package fake

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// vm is one simulated VM: what the configuration made of it, and its state.
// Every field is guarded by Driver.mu.
type vm struct {
	name      string
	id        string
	snapshots []string
	online    map[string]bool
	timing    Timing
	// configured are the faults of the configuration; faults adds those
	// injected since (vmState.Injected) and is what operations obey.
	configured Faults
	faults     Faults
	st         vmState
	// lockSeen is set by advance while a held session lock (vmState.LockHold)
	// is still to be seen by the call that advanced the VM.
	lockSeen bool
}

// vmState is what the simulated hypervisor knows about a VM, and all that
// state_dir persists of it. Times are absolute wall-clock times, so a
// relaunched driver that loads them sees transitions fall due exactly when
// they would have in the process that recorded them.
type vmState struct {
	Power   hypervisor.PowerState `json:"power"`
	Changed time.Time             `json:"changed"`
	// Pending is the one transition under way, if any. A VM stuck in
	// stopping has none: nothing will ever move it but an emergency stop.
	Pending *transition `json:"pending,omitempty"`
	// LockedUntil is when the session left behind by a gone VM process
	// finishes tearing down.
	LockedUntil time.Time `json:"locked_until,omitzero"`
	// StaleLock is a session whose owner is gone and that never tears down
	// by itself; only Unlock releases it.
	StaleLock       bool   `json:"stale_lock,omitempty"`
	CurrentSnapshot string `json:"current_snapshot,omitempty"`
	// Dirty means the VM ran since its last restore, so a cleanup that asks
	// for a restore must really restore.
	Dirty bool `json:"dirty,omitempty"`
	// GuestReady is when the guest starts accepting guest operations.
	GuestReady time.Time `json:"guest_ready,omitzero"`
	// Disk numbers the guest filesystem; a restore starts a fresh one.
	Disk int `json:"disk"`
	// Used counts the failures each counted fault has already produced.
	Used faultsUsed `json:"faults_used"`
	// Exited lists the exit_during operations that already fired.
	Exited []string `json:"exited,omitempty"`
	// Raw is the hypervisor's word for a state the driver cannot map
	// (Power unknown).
	Raw string `json:"raw,omitempty"`
	// Injected are faults added while the world runs (Driver.Inject), on
	// top of the configured ones.
	Injected *Faults `json:"injected,omitempty"`
	// Hold is how many more calls must find the pending transition under
	// way before it may complete, however long past its due time: a
	// violation whose lie or early answer lasts only while the transition
	// does sets it, so that the caller who acts on the lie finds it still
	// true on a machine too busy to act within the transition's time
	// (Driver.holdLocked).
	Hold int `json:"hold,omitempty"`
	// LockHold is the same for a session lock a violation leaves behind:
	// it is held for that many more calls, whatever LockedUntil says.
	LockHold int `json:"lock_hold,omitempty"`
}

type faultsUsed struct {
	PowerOff int `json:"poweroff,omitempty"`
	Restore  int `json:"restore,omitempty"`
	Start    int `json:"start,omitempty"`
	Status   int `json:"status,omitempty"`
	CopyIn   int `json:"copy_in,omitempty"`
	CopyOut  int `json:"copy_out,omitempty"`
}

// The kinds of transition, which decide what reaching the target means.
const (
	kindBoot     = "boot"     // starting → running
	kindShutdown = "shutdown" // stopping → off: the VM process exits
	kindKill     = "kill"     // any process → aborted: the VM process is killed
	kindRestore  = "restore"  // restoring → off or saved, at a snapshot
)

// transition is a state change that falls due at a known time. Status
// applies it when asked after Due; nothing needs to run in the meantime.
type transition struct {
	Kind     string                `json:"kind"`
	To       hypervisor.PowerState `json:"to"`
	Due      time.Time             `json:"due"`
	Snapshot string                `json:"snapshot,omitempty"`
	// From and FromChanged let a restore whose caller gave up be undone.
	From        hypervisor.PowerState `json:"from,omitempty"`
	FromChanged time.Time             `json:"from_changed,omitzero"`
}

// is reports whether t is the transition o, compared by value: a world
// reloaded from state_dir (another process saved it) holds a copy.
func (t *transition) is(o *transition) bool {
	return t != nil && o != nil && t.Kind == o.Kind && t.Due.Equal(o.Due) && t.Snapshot == o.Snapshot && t.To == o.To
}

func newVM(name string, c VMConfig, base Timing, now time.Time) *vm {
	v := &vm{
		name:       name,
		id:         vmID(name),
		snapshots:  c.Snapshots,
		online:     map[string]bool{},
		timing:     c.Timing.resolve(base),
		configured: c.Faults,
		faults:     c.Faults,
	}
	for _, s := range c.OnlineSnapshots {
		v.online[s] = true
	}
	p := c.initialPower()
	v.st = vmState{
		Power:           p,
		Changed:         now,
		StaleLock:       c.Locked,
		CurrentSnapshot: c.initialSnapshot(),
		// A VM that has a process or died in one has run since any restore.
		Dirty: !p.IsOff() || p == hypervisor.PowerAborted,
	}
	if p == hypervisor.PowerRunning {
		v.st.GuestReady = now
	}
	if p == hypervisor.PowerUnknown {
		v.st.Raw = c.RawState
	}
	return v
}

// vmID is a stable UUID-shaped identifier, so that ListVMs looks like a
// real hypervisor's and stays the same across relaunches.
func vmID(name string) string {
	h := sha256.Sum256([]byte("sandbox-fake-vm:" + name))
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// hasProcess reports whether a VM process exists in state p; it holds the
// VM's session lock for as long as it lives.
func hasProcess(p hypervisor.PowerState) bool {
	switch p {
	case hypervisor.PowerStarting, hypervisor.PowerRunning, hypervisor.PowerPaused,
		hypervisor.PowerStopping, hypervisor.PowerStuck:
		return true
	}
	return false
}

// advance applies the pending transition if it is due at now. Every call
// on the VM advances it once as it begins, so it also counts the calls a
// held transition or lock still waits for: the call that counts one down
// still finds it.
func (v *vm) advance(now time.Time) { v.advanceBy(now, true) }

// peek applies the pending transition if it is due at now and not held,
// without counting a call against the holds: a listing of every VM is no
// call on any one of them.
func (v *vm) peek(now time.Time) { v.advanceBy(now, false) }

func (v *vm) advanceBy(now time.Time, call bool) {
	if call {
		v.lockSeen = v.st.LockHold > 0
		if v.lockSeen {
			v.st.LockHold--
		}
	}
	t := v.st.Pending
	if t != nil && v.st.Hold > 0 {
		if call {
			v.st.Hold--
		}
		return
	}
	if t == nil || now.Before(t.Due) {
		return
	}
	v.st.Pending = nil
	v.st.Power = t.To
	v.st.Changed = t.Due
	switch t.Kind {
	case kindShutdown, kindKill:
		// The VM process is gone but its session is not: VBoxSVC tears it
		// down only once it notices, and with the fault never.
		v.st.GuestReady = time.Time{}
		v.st.LockedUntil = t.Due.Add(v.faults.lingering(v.timing))
		v.st.StaleLock = v.faults.StaleLockAfterStop
	case kindRestore:
		v.st.CurrentSnapshot = t.Snapshot
		v.st.Dirty = false
		v.st.Disk++
	}
}

// leave sends the VM process on its way out: it is gone at due, unless it
// was already leaving sooner (a kill does not wait for a slow power-off, and
// a power-off does not delay a kill).
func (v *vm) leave(kind string, to hypervisor.PowerState, due time.Time) {
	if t := v.st.Pending; t != nil && (t.Kind == kindShutdown || t.Kind == kindKill) && !due.Before(t.Due) {
		return
	}
	v.st.Pending = &transition{Kind: kind, To: to, Due: due}
}

// locked reports whether anything holds the VM's session at now: its VM
// process, a restore in progress, or a session left behind.
func (v *vm) locked(now time.Time) bool {
	return hasProcess(v.st.Power) || v.st.Power == hypervisor.PowerRestoring ||
		v.st.StaleLock || now.Before(v.st.LockedUntil) || v.lockSeen
}

// nextEvent is the next time the VM's status changes by itself, or zero if
// it never will.
func (v *vm) nextEvent(now time.Time) time.Time {
	if v.st.Pending != nil {
		return v.st.Pending.Due
	}
	if v.st.LockHold > 0 || v.lockSeen {
		return now // a held lock goes with the calls that look, not with time
	}
	if !hasProcess(v.st.Power) && !v.st.StaleLock && now.Before(v.st.LockedUntil) {
		return v.st.LockedUntil
	}
	return time.Time{}
}

// status is the VM's Status at now; withLock is CapLockState.
func (v *vm) status(now time.Time, withLock bool) hypervisor.Status {
	s := hypervisor.Status{
		VM:              v.name,
		Power:           v.st.Power,
		Raw:             v.raw(),
		Lock:            hypervisor.LockUnknown,
		CurrentSnapshot: v.st.CurrentSnapshot,
		StateChanged:    v.st.Changed.Round(0),
	}
	if withLock {
		s.Lock = hypervisor.LockUnlocked
		if v.locked(now) {
			s.Lock = hypervisor.LockLocked
		}
	}
	return s
}

// raw is the hypervisor's word for the VM's state.
func (v *vm) raw() string {
	if v.st.Power == hypervisor.PowerUnknown && v.st.Raw != "" {
		return v.st.Raw
	}
	return rawStates[v.st.Power]
}

// guestReady reports whether guest operations work at now.
func (v *vm) guestReady(now time.Time) bool {
	return v.st.Power == hypervisor.PowerRunning && !now.Before(v.st.GuestReady)
}

// useFault consumes one of the first n failures a fault produces and
// reports whether this call is one of them.
func useFault(used *int, n int) bool {
	if *used >= n {
		return false
	}
	*used++
	return true
}

func (v *vm) hasSnapshot(name string) bool {
	return slices.Contains(v.snapshots, name)
}

// rawStates are VirtualBox's VMState words, so that what the fake reports
// in Status.Raw reads like what a real driver passes through.
var rawStates = map[hypervisor.PowerState]string{
	hypervisor.PowerOff:       "poweroff",
	hypervisor.PowerSaved:     "saved",
	hypervisor.PowerAborted:   "aborted",
	hypervisor.PowerStarting:  "starting",
	hypervisor.PowerRunning:   "running",
	hypervisor.PowerPaused:    "paused",
	hypervisor.PowerStopping:  "stopping",
	hypervisor.PowerRestoring: "restoringsnapshot",
	hypervisor.PowerStuck:     "gurumeditation",
}

// enumStates are the spellings VirtualBox uses inside its error texts.
var enumStates = map[hypervisor.PowerState]string{
	hypervisor.PowerOff:       "PoweredOff",
	hypervisor.PowerSaved:     "Saved",
	hypervisor.PowerAborted:   "Aborted",
	hypervisor.PowerStarting:  "Starting",
	hypervisor.PowerRunning:   "Running",
	hypervisor.PowerPaused:    "Paused",
	hypervisor.PowerStopping:  "Stopping",
	hypervisor.PowerRestoring: "RestoringSnapshot",
	hypervisor.PowerStuck:     "Stuck",
}

// plus returns f with the faults of o added: flags set, counts added (each
// counted fault fails that many more calls), durations and lists merged.
func (f Faults) plus(o Faults) Faults {
	f.ACPIIgnored = f.ACPIIgnored || o.ACPIIgnored
	f.StuckInStopping = f.StuckInStopping || o.StuckInStopping
	f.StaleLockAfterStop = f.StaleLockAfterStop || o.StaleLockAfterStop
	f.PowerOffFailures += o.PowerOffFailures
	if o.PowerOffError != "" {
		f.PowerOffError = o.PowerOffError
	}
	f.RestoreFailures += o.RestoreFailures
	f.StartFailures += o.StartFailures
	f.StatusFailures += o.StatusFailures
	f.CopyInFailures += o.CopyInFailures
	f.CopyOutFailures += o.CopyOutFailures
	f.LockHeldAfterStop = max(f.LockHeldAfterStop, o.LockHeldAfterStop)
	f.Slow = max(f.Slow, o.Slow)
	f.ExitDuring = append(slices.Clone(f.ExitDuring), o.ExitDuring...)
	return f
}

// refreshFaults recomputes the faults the VM obeys after its state changed
// hands (an injection, a reload).
func (v *vm) refreshFaults() {
	v.faults = v.configured
	if v.st.Injected != nil {
		v.faults = v.faults.plus(*v.st.Injected)
	}
}
