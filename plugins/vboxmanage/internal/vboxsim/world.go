package vboxsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Files in the state directory.
const (
	stateFile = "state.json"
	lockFile  = "state.lock"
	argvFile  = "argv.log"
	guestDir  = "guest"
)

// Session states, as VirtualBox names them.
const (
	// Unlocked: nobody holds the machine.
	Unlocked = "Unlocked"
	// Spawning: a VM process is being launched for it.
	Spawning = "Spawning"
	// Locked: a client holds it.
	Locked = "Locked"
	// Unlocking: the holder is going away (a VM process exiting).
	Unlocking = "Unlocking"
)

// Session owners.
const (
	// OwnerVM is the VM process (VBoxHeadless, VirtualBoxVM).
	OwnerVM = "vm"
	// OwnerClient is another VBoxManage; it releases the lock when it
	// exits, or when it dies.
	OwnerClient = "client"
	// OwnerGUI is the VirtualBox Manager with a settings dialog open.
	OwnerGUI = "gui"
)

// World is everything the simulated VBoxSVC knows.
type World struct {
	// Config is the simulated installation.
	Config Config `json:"config"`
	// VMs are the registered machines, in registration order.
	VMs []*VM `json:"vms"`
}

// Config selects the simulated VirtualBox and how it misbehaves.
type Config struct {
	// Version is what --version prints, e.g. "7.0.14r161095".
	Version string `json:"version"`
	// Host is "linux", "darwin" or "windows": the program name in
	// messages, CRLF line ends, COM vs XPCOM error details, path style.
	Host string `json:"host"`
	// Timing is how long things take.
	Timing Timing `json:"timing"`
	// Faults are the failures to inject.
	Faults Faults `json:"faults"`
}

// Timing is how long simulated operations take. Zero means instant.
type Timing struct {
	// Start is how long startvm takes to bring the VM to running, and how
	// long a VM found in starting (a fixture) takes to get there.
	Start Duration `json:"start"`
	// ACPIShutdown is how long a guest takes to power off after the ACPI
	// power button.
	ACPIShutdown Duration `json:"acpi_shutdown"`
	// PowerOff is how long controlvm poweroff's progress runs.
	PowerOff Duration `json:"poweroff"`
	// Restore is how long a snapshot restore's progress runs.
	Restore Duration `json:"restore"`
	// Unlock is how long the session stays "unlocking" after the VM
	// powered off, while the VM process exits. Negative: until an
	// emergencystop kills the process (a VM process that will not die).
	Unlock Duration `json:"unlock"`
	// UnlockSeen, when positive, keeps a session that is unlocking after a
	// power-off until this many commands have met it (listings that showed
	// it: showvminfo of the VM, list --long; commands it refused), as well
	// as for Unlock: a lingering session a test is sure to meet, however
	// slowly a busy machine runs the commands between the power-off and
	// the look. Wall-clock time alone cannot promise that.
	UnlockSeen int `json:"unlock_seen,omitempty"`
	// KillUnlock is how long the session of a process killed by
	// emergencystop takes to disappear.
	KillUnlock Duration `json:"kill_unlock"`
	// ReadHold is how long a command that asks for a shared lock holds an
	// unlocked machine exclusively (showvminfo, controlvm, snapshot list).
	ReadHold Duration `json:"read_hold"`
	// WriteHold is how long a write-lock command (modifyvm) holds it.
	WriteHold Duration `json:"write_hold"`
	// GuestReady is how long after start the guest execution service
	// answers "not ready (yet)".
	GuestReady Duration `json:"guest_ready"`
}

// Faults are injected failures. Counters are consumed one per affected
// invocation.
type Faults struct {
	// ACPIIgnored makes the guest ignore the ACPI power button.
	ACPIIgnored bool `json:"acpi_ignored,omitempty"`
	// HangPowerOff makes controlvm poweroff hang after "0%..." with the
	// VM stuck in stopping, until the process is killed.
	HangPowerOff bool `json:"hang_poweroff,omitempty"`
	// HangStarting keeps a VM in starting until its process is killed, as
	// a VM process stuck while powering up does.
	HangStarting bool `json:"hang_starting,omitempty"`
	// ExitBeforeKill makes the exiting VM process of a stopped VM finish
	// exiting just as an emergencystop comes for it, which then finds
	// nothing to kill: the race between reading a session and killing it.
	ExitBeforeKill bool `json:"exit_before_kill,omitempty"`
	// HangVersion makes the next N --version calls hang until the process
	// is killed; negative: all of them.
	HangVersion int `json:"hang_version,omitempty"`
	// AccessDenied makes the next N showvminfo or list --long calls fail
	// half-way with E_ACCESSDENIED "The object is not ready", as during a
	// transition.
	AccessDenied int `json:"access_denied,omitempty"`
	// Garbage makes the next N showvminfo / list calls print junk and
	// exit 0.
	Garbage int `json:"garbage,omitempty"`
	// ServiceDown makes the next N calls that need VBoxSVC fail with
	// "Failed to create the VirtualBox object!"; negative: all of them.
	ServiceDown int `json:"service_down,omitempty"`
	// EmptyVersion makes the next N --version calls print an empty line.
	EmptyVersion int `json:"empty_version,omitempty"`
	// StartExit1 makes a successful startvm exit 1 anyway.
	StartExit1 bool `json:"start_exit1,omitempty"`
	// StartFailExit0 makes startvm fail (VT-x not available) with exit 0.
	StartFailExit0 bool `json:"start_fail_exit0,omitempty"`
	// Warnings prints the Linux wrapper's vboxdrv warning on stdout before
	// every command's output.
	Warnings bool `json:"warnings,omitempty"`
	// HideSessionName leaves "Session name:" out of the human format, so
	// that tests show the driver getting past a held session the listing
	// does not reveal, as with a nameless one (another VBoxManage's).
	HideSessionName bool `json:"hide_session_name,omitempty"`
	// GuestStarting is what guest control answers while the guest boots
	// (Timing.GuestReady): "" or "not-ready" for "The guest execution
	// service is not ready (yet)", "not-started" for "Session is not in
	// started state", "starting" for "Error starting guest session
	// (current status is: starting)", "logon" for "The specified user was
	// not able to logon on guest".
	GuestStarting string `json:"guest_starting,omitempty"`
	// GuestNotReady makes the next N guest control calls on a running VM
	// answer as a guest still starting (GuestStarting's words), however
	// long ago it started: a boot a test is sure to see, on a machine of
	// any speed, where Timing.GuestReady's wall-clock time may be over
	// before the first call arrives.
	GuestNotReady int `json:"guest_not_ready,omitempty"`
}

// VM is one registered machine.
type VM struct {
	// Name and UUID identify the VM; either addresses it.
	Name string `json:"name"`
	UUID string `json:"uuid"`
	// OSType is the guest OS type id, e.g. "Windows10_64".
	OSType string `json:"ostype,omitempty"`
	// State is the VMState value, e.g. "poweroff".
	State string `json:"state"`
	// StateChanged is when State last changed.
	StateChanged time.Time `json:"state_changed"`
	// Snapshots are in creation order; Parent links make the tree.
	Snapshots []Snap `json:"snapshots,omitempty"`
	// Current is the current snapshot's UUID.
	Current string `json:"current,omitempty"`
	// Session is the machine's session lock.
	Session Session `json:"session"`
	// GuestUsers are the guest's accounts: user name to password.
	GuestUsers map[string]string `json:"guest_users,omitempty"`
	// StartedAt is when the VM process reached running.
	StartedAt time.Time `json:"started_at,omitzero"`
	// ACPIAt is when the power button was pressed, if the guest is
	// shutting down.
	ACPIAt time.Time `json:"acpi_at,omitzero"`
	// Inaccessible makes the VM's settings unreadable.
	Inaccessible bool `json:"inaccessible,omitempty"`
	// Unlock, when set, replaces Timing.Unlock for this VM: one VM whose
	// process lingers among well-behaved ones.
	Unlock *Duration `json:"unlock,omitempty"`
	// Restore, when set, replaces Timing.Restore for this VM.
	Restore *Duration `json:"restore,omitempty"`
}

// Snap is one snapshot.
type Snap struct {
	// Name and UUID identify the snapshot; names need not be unique.
	Name string `json:"name"`
	UUID string `json:"uuid"`
	// Description is printed only when set.
	Description string `json:"description,omitempty"`
	// Parent is the parent snapshot's UUID; empty for the root.
	Parent string `json:"parent,omitempty"`
	// Online snapshots were taken while the VM ran and restore to saved.
	Online bool `json:"online,omitempty"`
}

// Session is the machine's session lock.
type Session struct {
	// State is Unlocked, Spawning, Locked or Unlocking.
	State string `json:"state"`
	// Owner is OwnerVM, OwnerClient or OwnerGUI.
	Owner string `json:"owner,omitempty"`
	// Name is the session's name ("headless", "GUI/Qt"); empty for a
	// VBoxManage client.
	Name string `json:"name,omitempty"`
	// PID is the owning VBoxManage's process, for the client watcher.
	PID int `json:"pid,omitempty"`
	// Until is when an unlocking session is gone; zero: never.
	Until time.Time `json:"until,omitzero"`
	// Unseen is how many more commands must meet an unlocking session
	// before it can be gone (Timing.UnlockSeen).
	Unseen int `json:"unseen,omitempty"`
}

// Duration is a time.Duration written as text ("1.5s") in the state file.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads text or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return err
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// NewVM returns a powered-off, unlocked VM with one offline snapshot
// named "clean" that is current, and the given guest account.
func NewVM(name, uuid string) *VM {
	snap := deriveUUID(uuid, 1)
	return &VM{
		Name: name, UUID: uuid, OSType: "Windows10_64", State: "poweroff",
		StateChanged: time.Date(2024, 3, 5, 9, 58, 41, 0, time.UTC),
		Snapshots:    []Snap{{Name: "clean", UUID: snap}},
		Current:      snap,
		Session:      Session{State: Unlocked},
		GuestUsers:   map[string]string{},
	}
}

// deriveUUID makes a stable UUID from another, for fixtures.
func deriveUUID(uuid string, n int) string {
	if len(uuid) != 36 {
		return uuid
	}
	return fmt.Sprintf("%s%04x", uuid[:32], n&0xffff)
}

// Create writes a new world to dir, replacing any there.
func Create(dir string, w *World) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return withLock(dir, func() error { return save(dir, w, nil) })
}

// Update applies fn to the world in dir under the state lock and saves
// it, after advancing the world to now. fn's error is returned after the
// world is saved, so that consumed fault counters stay consumed.
func Update(dir string, fn func(w *World) error) error {
	return withLock(dir, func() error {
		w, was, err := load(dir)
		if err != nil {
			return err
		}
		w.advance(time.Now())
		ferr := fn(w)
		if err := save(dir, w, was); err != nil {
			return err
		}
		return ferr
	})
}

// Load returns the world in dir as of now.
func Load(dir string) (*World, error) {
	var out *World
	err := Update(dir, func(w *World) error { out = w; return nil })
	return out, err
}

// Find returns the VM registered under name or UUID (braces optional).
func (w *World) Find(ref string) *VM {
	id := trimBraces(ref)
	for _, vm := range w.VMs {
		if vm.UUID == id {
			return vm
		}
	}
	for _, vm := range w.VMs {
		if vm.Name == ref {
			return vm
		}
	}
	return nil
}

func trimBraces(s string) string {
	if len(s) == 38 && s[0] == '{' && s[37] == '}' {
		return s[1:37]
	}
	return s
}

// load returns the world in dir and the file it was read from.
func load(dir string) (*World, []byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("vboxsim: no world in %s (VBOX_USER_HOME)", dir)
		}
		return nil, nil, err
	}
	var w World
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, nil, fmt.Errorf("vboxsim: %s: %w", stateFile, err)
	}
	return &w, data, nil
}

// save writes w unless it is still what was read: most invocations only
// look, and the driver runs thousands of them in a test.
func save(dir string, w *World, was []byte) error {
	data, err := json.MarshalIndent(w, "", "  ")
	if err != nil {
		return err
	}
	if bytes.Equal(data, was) {
		return nil
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
}

func withLock(dir string, fn func() error) error {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := lockFileExclusive(f); err != nil {
		return err
	}
	defer unlockFile(f)
	return fn()
}

// advance applies the time that passed since the last invocation: guests
// that finished an ACPI shutdown, VM processes that finished exiting,
// VBoxManage clients that died holding a lock.
func (w *World) advance(now time.Time) {
	t := w.Config.Timing
	for _, vm := range w.VMs {
		if vm.State == "starting" && vm.Session.Owner == OwnerVM && !w.Config.Faults.HangStarting {
			if up := vm.StateChanged.Add(t.Start.D()); !now.Before(up) {
				vm.State, vm.StateChanged, vm.StartedAt = "running", up, up
			}
		}
		if !vm.ACPIAt.IsZero() && vm.State == "running" {
			if done := vm.ACPIAt.Add(t.ACPIShutdown.D()); !now.Before(done) {
				vm.powerDown(done, vm.unlockDelay(t), t.UnlockSeen)
			}
		}
		s := &vm.Session
		switch s.State {
		case Unlocking:
			if !s.Until.IsZero() && !now.Before(s.Until) && s.Unseen <= 0 {
				*s = Session{State: Unlocked}
			}
		case Spawning:
			if !pidAlive(s.PID) {
				// The VM process was launched; it comes up whether or
				// not the startvm that asked for it is still waiting.
				vm.bootNow(now, "headless")
			}
		case Locked:
			if s.Owner == OwnerClient && !pidAlive(s.PID) {
				*s = Session{State: Unlocked}
				if vm.State == "restoringsnapshot" {
					// A restore killed half-way leaves the VM as it was.
					vm.State = "poweroff"
				}
			}
		}
	}
}

// powerDown puts a VM whose process powered off at t into poweroff, with
// the session still held while the VM process exits, and until seen
// commands have met it.
func (vm *VM) powerDown(t time.Time, unlock time.Duration, seen int) {
	vm.State, vm.StateChanged = "poweroff", t
	vm.ACPIAt, vm.StartedAt = time.Time{}, time.Time{}
	name := vm.Session.Name
	switch {
	case unlock < 0:
		vm.Session = Session{State: Unlocking, Owner: OwnerVM, Name: name}
	case unlock == 0 && seen <= 0:
		vm.Session = Session{State: Unlocked}
	default:
		vm.Session = Session{State: Unlocking, Owner: OwnerVM, Name: name, Until: t.Add(unlock), Unseen: seen}
	}
}

// shown counts one command that met the VM's unlocking session (a listing
// showed it, or it refused the command), for UnlockSeen.
func (vm *VM) shown() {
	if vm.Session.State == Unlocking && vm.Session.Unseen > 0 {
		vm.Session.Unseen--
	}
}

// bootNow makes the VM process's guest run from now, holding the session.
func (vm *VM) bootNow(now time.Time, name string) {
	vm.State, vm.StateChanged, vm.StartedAt = "running", now, now
	vm.ACPIAt = time.Time{}
	vm.Session = Session{State: Locked, Owner: OwnerVM, Name: name}
}

// Boot puts the VM in state (running by default) with a VM process that
// holds its session, for test fixtures.
func (vm *VM) Boot(state string) {
	vm.bootNow(time.Now(), "headless")
	if state != "" {
		vm.State = state
	}
}

// hasProcess reports whether a VM process exists in state s.
func hasProcess(s string) bool {
	switch s {
	case "running", "paused", "gurumeditation", "starting", "stopping", "saving", "restoring",
		"livesnapshotting", "onlinesnapshotting", "teleporting", "teleportingpausedvm", "teleportingin",
		"deletingsnapshotlive", "deletingsnapshotlivepaused", "faulttolerantsyncing":
		return true
	}
	return false
}

// isOff reports the states restore and startvm accept.
func isOff(s string) bool {
	switch s {
	case "poweroff", "saved", "aborted", "aborted-saved", "teleported":
		return true
	}
	return false
}

// Invocation is one line of argv.log.
type Invocation struct {
	// PID is the invocation's process.
	PID int `json:"pid"`
	// Time is when it started.
	Time time.Time `json:"time"`
	// Args are its arguments, program name excluded.
	Args []string `json:"args"`
}

// Invocations returns every recorded invocation in dir, in order.
func Invocations(dir string) ([]Invocation, error) {
	data, err := os.ReadFile(filepath.Join(dir, argvFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Invocation
	dec := json.NewDecoder(bytes.NewReader(data))
	for dec.More() {
		var inv Invocation
		if err := dec.Decode(&inv); err != nil {
			return out, err
		}
		out = append(out, inv)
	}
	return out, nil
}

// recordArgv appends one invocation with a single write, which O_APPEND
// keeps whole among concurrent invocations.
func recordArgv(dir string, pid int, args []string) {
	line, err := json.Marshal(Invocation{PID: pid, Time: time.Now(), Args: args})
	if err != nil {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, argvFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

// unlockDelay is how long this VM's process takes to exit after power-off.
func (vm *VM) unlockDelay(t Timing) time.Duration {
	if vm.Unlock != nil {
		return vm.Unlock.D()
	}
	return t.Unlock.D()
}
