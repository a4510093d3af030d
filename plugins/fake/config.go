package fake

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Config is the fake's table of config.toml ([plugins.fake.config]). Every
// key is optional; an empty table gives a driver with no VMs.
type Config struct {
	// capabilities: declare only these (for tests of simpler drivers); the
	// operations left out answer CodeUnsupported. Absent means all of them.
	Capabilities []hypervisor.Capability `toml:"capabilities,omitempty"`
	// journal: file that gets one JSON line per operation that reached the
	// simulated hypervisor, so tests can assert what was (not) sent.
	Journal string `toml:"journal,omitempty"`
	// state_dir: directory where the world is saved after every change and
	// loaded at start, so a relaunched plugin finds its VMs as a real
	// hypervisor would after its driver died. Absent keeps the world in
	// memory only.
	StateDir string `toml:"state_dir,omitempty"`
	// scratch_dir: base of the per-VM guest filesystems. Defaults to
	// <state_dir>/guests with state_dir, else to a temporary directory that
	// lives as long as the driver.
	ScratchDir string `toml:"scratch_dir,omitempty"`
	// timing: how long the simulated hypervisor takes, for every VM.
	Timing Timing `toml:"timing"`
	// vms: the VMs, by name.
	VMs map[string]VMConfig `toml:"vms,omitempty"`
	// violations: rules of the contract to break on purpose, one Violation
	// each ("early-off", ...), for tests that the conformance suite notices.
	// Absent or empty: the fake keeps the whole contract.
	Violations []Violation `toml:"violations,omitempty"`
}

// Timing says how long the simulated transitions take. The defaults are
// small so that a test suite driving many VMs through them stays fast.
type Timing struct {
	// start: from starting to running.
	Start time.Duration `toml:"start"`
	// acpi_shutdown: from the power button to off, for a guest that obeys it.
	ACPIShutdown time.Duration `toml:"acpi_shutdown"`
	// poweroff: from a hard power-off to off.
	PowerOff time.Duration `toml:"poweroff"`
	// emergency: from an emergency stop to aborted.
	Emergency time.Duration `toml:"emergency"`
	// restore: how long a snapshot restore blocks.
	Restore time.Duration `toml:"restore"`
	// unlock_after_stop: how long the session lock outlives the VM process,
	// like VirtualBox's Unlocking session state.
	UnlockAfterStop time.Duration `toml:"unlock_after_stop"`
	// guest_ready: from running to a guest that accepts guest operations.
	GuestReady time.Duration `toml:"guest_ready"`
}

// DefaultConfig is the configuration an empty table decodes to; the
// defaults live here and nowhere else. Build a Config for NewDriver from it,
// since a zero Timing makes every transition instantaneous.
func DefaultConfig() Config {
	return Config{Timing: defaultTiming}
}

var defaultTiming = Timing{
	Start:           50 * time.Millisecond,
	ACPIShutdown:    100 * time.Millisecond,
	PowerOff:        50 * time.Millisecond,
	Emergency:       10 * time.Millisecond,
	Restore:         50 * time.Millisecond,
	UnlockAfterStop: 100 * time.Millisecond,
	GuestReady:      50 * time.Millisecond,
}

// TimingOverride is a VM's own timing: each key set replaces the one of
// the driver-wide timing table, each key left out inherits it.
// Pointers tell a key set to zero ("0s": instantaneous) from one left out.
type TimingOverride struct {
	// start: overrides timing.start.
	Start *time.Duration `toml:"start,omitempty"`
	// acpi_shutdown: overrides timing.acpi_shutdown.
	ACPIShutdown *time.Duration `toml:"acpi_shutdown,omitempty"`
	// poweroff: overrides timing.poweroff.
	PowerOff *time.Duration `toml:"poweroff,omitempty"`
	// emergency: overrides timing.emergency.
	Emergency *time.Duration `toml:"emergency,omitempty"`
	// restore: overrides timing.restore.
	Restore *time.Duration `toml:"restore,omitempty"`
	// unlock_after_stop: overrides timing.unlock_after_stop.
	UnlockAfterStop *time.Duration `toml:"unlock_after_stop,omitempty"`
	// guest_ready: overrides timing.guest_ready.
	GuestReady *time.Duration `toml:"guest_ready,omitempty"`
}

// VMConfig is one VM of the fake world as it is when the world is created.
type VMConfig struct {
	// state: initial power state: off, saved, aborted, running, paused,
	// stopping (stuck there until an emergency stop) or stuck (guru
	// meditation). Default off.
	State string `toml:"state,omitempty"`
	// raw_state: instead of state, the simulated hypervisor reports this
	// word, one no driver has a mapping for (a newer hypervisor's state):
	// Status says unknown with this raw word (§3.2), and every operation
	// that needs a known state answers invalid state.
	RawState string `toml:"raw_state,omitempty"`
	// snapshots: the VM's snapshots.
	Snapshots []string `toml:"snapshots,omitempty"`
	// current_snapshot: the snapshot the VM descends from; defaults to the
	// last of snapshots, the most recent one as VirtualBox has it.
	CurrentSnapshot string `toml:"current_snapshot,omitempty"`
	// online_snapshots: the snapshots taken while running; restoring one
	// yields saved instead of off.
	OnlineSnapshots []string `toml:"online_snapshots,omitempty"`
	// locked: the VM starts with a stale session lock held by nobody alive;
	// only Unlock (or Cleanup) releases it. Needs a state without a VM
	// process.
	Locked bool `toml:"locked,omitempty"`
	// timing: this VM's overrides of the driver-wide timing.
	Timing TimingOverride `toml:"timing,omitempty"`
	// faults: what goes wrong with this VM.
	Faults Faults `toml:"faults,omitempty"`
}

// Faults are a VM's scripted misbehaviour, each modelled on something
// VirtualBox does in the field.
type Faults struct {
	// acpi_ignored: the guest ignores the power button and keeps running.
	ACPIIgnored bool `toml:"acpi_ignored,omitempty"`
	// stuck_in_stopping: a power-off leaves the VM in stopping until an
	// emergency stop.
	StuckInStopping bool `toml:"stuck_in_stopping,omitempty"`
	// poweroff_failures: the first N power-offs that reach the hypervisor fail.
	PowerOffFailures int `toml:"poweroff_failures,omitempty"`
	// poweroff_error: how those power-offs fail: failed (default), locked
	// or invalid_state.
	PowerOffError string `toml:"poweroff_error,omitempty"`
	// lock_held_after_stop: the session stays locked this long after the VM
	// process is gone, instead of unlock_after_stop; Unlock cannot shorten
	// it, it waits.
	LockHeldAfterStop time.Duration `toml:"lock_held_after_stop,omitempty"`
	// stale_lock_after_stop: the session lock left by the VM process never
	// goes away by itself; only Unlock releases it.
	StaleLockAfterStop bool `toml:"stale_lock_after_stop,omitempty"`
	// restore_failures: the first N restores that reach the hypervisor fail.
	RestoreFailures int `toml:"restore_failures,omitempty"`
	// start_failures: the first N starts that reach the hypervisor fail, as
	// a VM process that dies during startup.
	StartFailures int `toml:"start_failures,omitempty"`
	// status_failures: the first N status calls answer CodeUnavailable.
	StatusFailures int `toml:"status_failures,omitempty"`
	// copy_in_failures, copy_out_failures: the first N copies into (out
	// of) a ready guest fail, as a guest whose disk is full or whose file
	// is locked by a scanner.
	CopyInFailures  int `toml:"copy_in_failures,omitempty"`
	CopyOutFailures int `toml:"copy_out_failures,omitempty"`
	// slow: every call on this VM first waits this long, within its context.
	Slow time.Duration `toml:"slow,omitempty"`
	// exit_during: the plugin process exits with status 3 while serving
	// these operations, after the hypervisor took the command and before the
	// driver answered. Names: status, start, stop (any method), acpi,
	// poweroff, emergency, unlock, restore, cleanup, copy-in, exec, copy-out,
	// watch. With state_dir each happens once per world; without it, once
	// per process.
	ExitDuring []string `toml:"exit_during,omitempty"`
}

// Exit status of the plugin process when an exit_during fault fires;
// distinct from a crash (2) and from a clean exit so tests can tell.
const exitFaultStatus = 3

var initialStates = map[string]hypervisor.PowerState{
	"off":      hypervisor.PowerOff,
	"saved":    hypervisor.PowerSaved,
	"aborted":  hypervisor.PowerAborted,
	"running":  hypervisor.PowerRunning,
	"paused":   hypervisor.PowerPaused,
	"stopping": hypervisor.PowerStopping,
	"stuck":    hypervisor.PowerStuck,
}

var poweroffErrors = map[string]hypervisor.Code{
	"failed":        hypervisor.CodeFailed,
	"locked":        hypervisor.CodeLocked,
	"invalid_state": hypervisor.CodeInvalidState,
}

var exitOps = []string{
	hypervisor.OpStatus, hypervisor.OpStart, hypervisor.OpStop,
	string(hypervisor.StopACPI), string(hypervisor.StopPowerOff), string(hypervisor.StopEmergency),
	hypervisor.OpUnlock, hypervisor.OpRestore, hypervisor.OpCleanup,
	hypervisor.OpCopyIn, hypervisor.OpExec, hypervisor.OpCopyOut, hypervisor.OpWatch,
}

// configError is a validation mistake at a key of the plugin's table; New
// turns it into the SDK's file:line:key error.
type configError struct {
	key []string
	msg string
}

func (e *configError) Error() string {
	return "fake: " + strings.Join(e.key, ".") + ": " + e.msg
}

func keyErr(msg string, key ...string) *configError {
	return &configError{key: key, msg: msg}
}

// resolve merges the VM's timing over the driver-wide one.
func (o TimingOverride) resolve(base Timing) Timing {
	t := base
	for _, f := range []struct {
		src *time.Duration
		dst *time.Duration
	}{
		{o.Start, &t.Start}, {o.ACPIShutdown, &t.ACPIShutdown}, {o.PowerOff, &t.PowerOff},
		{o.Emergency, &t.Emergency}, {o.Restore, &t.Restore},
		{o.UnlockAfterStop, &t.UnlockAfterStop}, {o.GuestReady, &t.GuestReady},
	} {
		if f.src != nil {
			*f.dst = *f.src
		}
	}
	return t
}

func (t Timing) validate(key ...string) *configError {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"start", t.Start}, {"acpi_shutdown", t.ACPIShutdown}, {"poweroff", t.PowerOff},
		{"emergency", t.Emergency}, {"restore", t.Restore},
		{"unlock_after_stop", t.UnlockAfterStop}, {"guest_ready", t.GuestReady},
	} {
		if f.d < 0 {
			return keyErr("must not be negative", append(key, f.name)...)
		}
	}
	return nil
}

// validate reports the first mistake of c, with the key (relative to the
// plugin's table) where it is.
func (c *Config) validate() *configError {
	for i, cp := range c.Capabilities {
		if !hypervisor.AllCapabilities.Has(cp) {
			return keyErr(fmt.Sprintf("capabilities[%d]: unknown capability %q; known: %s",
				i, cp, hypervisor.AllCapabilities), "capabilities")
		}
	}
	if err := c.Timing.validate("timing"); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(c.VMs)) {
		if err := c.VMs[name].validate(name, c.Timing); err != nil {
			return err
		}
	}
	for i, v := range c.Violations {
		if !slices.Contains(Violations, v) {
			return keyErr(fmt.Sprintf("violations[%d]: unknown violation %q; known: %s", i, v, joinViolations()), "violations")
		}
	}
	return nil
}

func joinViolations() string {
	s := make([]string, len(Violations))
	for i, v := range Violations {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

func (v VMConfig) validate(name string, base Timing) *configError {
	key := func(k ...string) []string { return append([]string{"vms", name}, k...) }
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return keyErr("a VM name must not be empty, '.', '..' or contain a path separator", key()...)
	}
	if v.State != "" {
		if _, ok := initialStates[v.State]; !ok {
			return keyErr(fmt.Sprintf("unknown state %q; use off, saved, aborted, running, paused, stopping or stuck",
				v.State), key("state")...)
		}
	}
	if v.RawState != "" {
		if v.State != "" {
			return keyErr("set state or raw_state, not both", key("raw_state")...)
		}
		for _, known := range rawStates {
			if strings.EqualFold(v.RawState, known) {
				return keyErr(fmt.Sprintf("%q is a state the driver knows; raw_state is for one it does not", v.RawState), key("raw_state")...)
			}
		}
	}
	seen := map[string]bool{}
	for _, s := range v.Snapshots {
		if s == "" {
			return keyErr("a snapshot name must not be empty", key("snapshots")...)
		}
		if seen[s] {
			return keyErr(fmt.Sprintf("snapshot %q is listed twice", s), key("snapshots")...)
		}
		seen[s] = true
	}
	if v.CurrentSnapshot != "" && !seen[v.CurrentSnapshot] {
		return keyErr(fmt.Sprintf("%q is not one of snapshots", v.CurrentSnapshot), key("current_snapshot")...)
	}
	for _, s := range v.OnlineSnapshots {
		if !seen[s] {
			return keyErr(fmt.Sprintf("%q is not one of snapshots", s), key("online_snapshots")...)
		}
	}
	if v.Locked && !v.initialPower().IsOff() {
		return keyErr("a stale lock needs a VM without a process (state off, saved or aborted)", key("locked")...)
	}
	if err := v.Timing.resolve(base).validate(key("timing")...); err != nil {
		return err
	}
	return v.Faults.validate(key("faults")...)
}

func (f Faults) validate(key ...string) *configError {
	at := func(k string) []string { return append(slices.Clone(key), k) }
	for _, n := range []struct {
		name string
		n    int
	}{
		{"poweroff_failures", f.PowerOffFailures}, {"restore_failures", f.RestoreFailures},
		{"start_failures", f.StartFailures}, {"status_failures", f.StatusFailures},
		{"copy_in_failures", f.CopyInFailures}, {"copy_out_failures", f.CopyOutFailures},
	} {
		if n.n < 0 {
			return keyErr("must not be negative", at(n.name)...)
		}
	}
	if f.PowerOffError != "" {
		if _, ok := poweroffErrors[f.PowerOffError]; !ok {
			return keyErr(fmt.Sprintf("unknown error %q; use failed, locked or invalid_state", f.PowerOffError),
				at("poweroff_error")...)
		}
	}
	if f.LockHeldAfterStop < 0 {
		return keyErr("must not be negative", at("lock_held_after_stop")...)
	}
	if f.Slow < 0 {
		return keyErr("must not be negative", at("slow")...)
	}
	for _, op := range f.ExitDuring {
		if !slices.Contains(exitOps, op) {
			return keyErr(fmt.Sprintf("unknown operation %q; use one of %s", op, strings.Join(exitOps, ", ")),
				at("exit_during")...)
		}
	}
	return nil
}

func (v VMConfig) initialPower() hypervisor.PowerState {
	if v.RawState != "" {
		return hypervisor.PowerUnknown
	}
	if v.State == "" {
		return hypervisor.PowerOff
	}
	return initialStates[v.State]
}

func (v VMConfig) initialSnapshot() string {
	if v.CurrentSnapshot != "" || len(v.Snapshots) == 0 {
		return v.CurrentSnapshot
	}
	return v.Snapshots[len(v.Snapshots)-1]
}

func (f Faults) poweroffCode() hypervisor.Code {
	if f.PowerOffError == "" {
		return hypervisor.CodeFailed
	}
	return poweroffErrors[f.PowerOffError]
}

func (f Faults) lingering(t Timing) time.Duration {
	if f.LockHeldAfterStop > 0 {
		return f.LockHeldAfterStop
	}
	return t.UnlockAfterStop
}
