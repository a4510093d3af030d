package config

import (
	"fmt"
	"time"
)

// Lifecycle is how one VM is stopped, unlocked and restored, resolved: the
// defaults, then the [lifecycle] table, then the VM's own [vms.NAME]
// table. docs/lifecycle.md explains each value.
type Lifecycle struct {
	// StopLadder is the order of stop methods tried, gentlest first
	// ("acpi", "poweroff", "emergency"). A VM that is restored after every
	// task can leave out acpi.
	StopLadder []string
	// ACPITimeout, PowerOffTimeout and EmergencyTimeout are each rung's
	// deadline: the time from issuing the stop until the VM must be off.
	ACPITimeout      time.Duration
	PowerOffTimeout  time.Duration
	EmergencyTimeout time.Duration
	// ReleaseTimeout is how long to wait, once the VM is off, for the
	// hypervisor to release its session by itself.
	ReleaseTimeout time.Duration
	// UnlockTimeout bounds the active unlock that follows when the session
	// was not released within ReleaseTimeout.
	UnlockTimeout time.Duration
	// SettleDelay is the fixed wait after a stop for drivers that cannot
	// report the lock state (the legacy behaviour); never used otherwise.
	SettleDelay time.Duration
	// RestoreTimeout bounds a snapshot restore, retries included.
	RestoreTimeout time.Duration
	// StartTimeout bounds a start, retries included.
	StartTimeout time.Duration
	// CleanupTimeout bounds a whole complete cleanup, the wait for another
	// operation on the VM included.
	CleanupTimeout time.Duration
	// StatusTimeout is how long a status read may keep failing transiently
	// (a plugin being relaunched, a hypervisor service starting) before the
	// operation gives up.
	StatusTimeout time.Duration
	// NativeCleanup lets a cleanup use the driver's own when it declares
	// one; false has the core compose it with the settings above.
	NativeCleanup bool
	// Snapshot is the snapshot restores and cleanups return to; empty
	// means the VM's current snapshot.
	Snapshot string
	// RestoreOnCleanup makes a complete cleanup end with a restore.
	RestoreOnCleanup bool
	// PollInterval is the first wait between status polls, for drivers
	// that cannot watch; it grows up to PollMaxInterval.
	PollInterval    time.Duration
	PollMaxInterval time.Duration
}

// Stop methods a stop ladder may name, gentlest first.
const (
	StopACPI      = "acpi"
	StopPowerOff  = "poweroff"
	StopEmergency = "emergency"
)

// MinPollInterval is the shortest wait between two status polls that
// poll_interval and poll_max_interval accept: polling more often only
// keeps the hypervisor busy.
const MinPollInterval = time.Millisecond

// DefaultLifecycle is what every VM starts from. docs/lifecycle.md
// documents each value; change them here and there together.
func DefaultLifecycle() Lifecycle {
	return Lifecycle{
		StopLadder:       []string{StopACPI, StopPowerOff, StopEmergency},
		ACPITimeout:      30 * time.Second,
		PowerOffTimeout:  15 * time.Second,
		EmergencyTimeout: 15 * time.Second,
		ReleaseTimeout:   10 * time.Second,
		UnlockTimeout:    20 * time.Second,
		SettleDelay:      2 * time.Second,
		RestoreTimeout:   60 * time.Second,
		StartTimeout:     60 * time.Second,
		CleanupTimeout:   3 * time.Minute,
		StatusTimeout:    30 * time.Second,
		NativeCleanup:    true,
		RestoreOnCleanup: true,
		PollInterval:     20 * time.Millisecond,
		PollMaxInterval:  250 * time.Millisecond,
	}
}

// RungTimeout is the deadline of the stop rung that uses method.
func (l Lifecycle) RungTimeout(method string) time.Duration {
	switch method {
	case StopACPI:
		return l.ACPITimeout
	case StopPowerOff:
		return l.PowerOffTimeout
	default:
		return l.EmergencyTimeout
	}
}

// StopBound is the longest a stop can take with these settings: every rung
// to its deadline, then the wait for the session and the unlock.
func (l Lifecycle) StopBound() time.Duration {
	d := l.ReleaseTimeout + l.UnlockTimeout + l.SettleDelay
	for _, m := range l.StopLadder {
		d += l.RungTimeout(m)
	}
	return d
}

// lifecycleTable is the TOML form of Lifecycle, for [lifecycle] and inside
// each [vms.NAME] table: a key that is set replaces the value below it, a
// key left out inherits it, so a file written before a key existed keeps
// working on its default.
type lifecycleTable struct {
	StopLadder       []string       `toml:"stop_ladder"`
	ACPITimeout      *time.Duration `toml:"acpi_timeout"`
	PowerOffTimeout  *time.Duration `toml:"poweroff_timeout"`
	EmergencyTimeout *time.Duration `toml:"emergency_timeout"`
	ReleaseTimeout   *time.Duration `toml:"release_timeout"`
	UnlockTimeout    *time.Duration `toml:"unlock_timeout"`
	SettleDelay      *time.Duration `toml:"settle_delay"`
	RestoreTimeout   *time.Duration `toml:"restore_timeout"`
	StartTimeout     *time.Duration `toml:"start_timeout"`
	CleanupTimeout   *time.Duration `toml:"cleanup_timeout"`
	StatusTimeout    *time.Duration `toml:"status_timeout"`
	NativeCleanup    *bool          `toml:"native_cleanup"`
	Snapshot         *string        `toml:"snapshot"`
	RestoreOnCleanup *bool          `toml:"restore_on_cleanup"`
	PollInterval     *time.Duration `toml:"poll_interval"`
	PollMaxInterval  *time.Duration `toml:"poll_max_interval"`
}

// apply returns l with every key set in t replaced.
func (l Lifecycle) apply(t lifecycleTable) Lifecycle {
	if t.StopLadder != nil {
		l.StopLadder = append([]string(nil), t.StopLadder...)
	}
	for _, d := range []struct {
		dst *time.Duration
		src *time.Duration
	}{
		{&l.ACPITimeout, t.ACPITimeout}, {&l.PowerOffTimeout, t.PowerOffTimeout},
		{&l.EmergencyTimeout, t.EmergencyTimeout}, {&l.ReleaseTimeout, t.ReleaseTimeout},
		{&l.UnlockTimeout, t.UnlockTimeout}, {&l.SettleDelay, t.SettleDelay},
		{&l.RestoreTimeout, t.RestoreTimeout}, {&l.StartTimeout, t.StartTimeout},
		{&l.CleanupTimeout, t.CleanupTimeout}, {&l.StatusTimeout, t.StatusTimeout},
		{&l.PollInterval, t.PollInterval}, {&l.PollMaxInterval, t.PollMaxInterval},
	} {
		if d.src != nil {
			*d.dst = *d.src
		}
	}
	if t.Snapshot != nil {
		l.Snapshot = *t.Snapshot
	}
	if t.RestoreOnCleanup != nil {
		l.RestoreOnCleanup = *t.RestoreOnCleanup
	}
	if t.NativeCleanup != nil {
		l.NativeCleanup = *t.NativeCleanup
	}
	return l
}

// validate returns the key (as written in config.toml) of the first bad
// setting of the table, and what is wrong with it.
func (t lifecycleTable) validate() (key string, err error) {
	seen := map[string]bool{}
	for _, m := range t.StopLadder {
		if m != StopACPI && m != StopPowerOff && m != StopEmergency {
			return "stop_ladder", fmt.Errorf("unknown stop method %q; use acpi, poweroff or emergency", m)
		}
		if seen[m] {
			return "stop_ladder", fmt.Errorf("%q appears twice", m)
		}
		seen[m] = true
	}
	if t.StopLadder != nil && len(t.StopLadder) == 0 {
		return "stop_ladder", fmt.Errorf("must name at least one stop method")
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
	}{
		{"acpi_timeout", t.ACPITimeout}, {"poweroff_timeout", t.PowerOffTimeout},
		{"emergency_timeout", t.EmergencyTimeout}, {"release_timeout", t.ReleaseTimeout},
		{"unlock_timeout", t.UnlockTimeout}, {"restore_timeout", t.RestoreTimeout},
		{"start_timeout", t.StartTimeout}, {"cleanup_timeout", t.CleanupTimeout}, {"status_timeout", t.StatusTimeout},
		{"poll_interval", t.PollInterval}, {"poll_max_interval", t.PollMaxInterval},
	} {
		if d.v != nil && *d.v <= 0 {
			return d.key, fmt.Errorf("must be a positive duration such as \"15s\"")
		}
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
	}{{"poll_interval", t.PollInterval}, {"poll_max_interval", t.PollMaxInterval}} {
		if d.v != nil && *d.v < MinPollInterval {
			return d.key, fmt.Errorf("must be at least %s: polling more often only keeps the hypervisor busy", MinPollInterval)
		}
	}
	if t.SettleDelay != nil && *t.SettleDelay < 0 {
		return "settle_delay", fmt.Errorf("must not be negative")
	}
	return "", nil
}

// validate checks what no single key can: settings that contradict each
// other once the layers are merged. It returns the key to blame.
func (l Lifecycle) validate() (key string, err error) {
	if l.PollInterval > l.PollMaxInterval {
		return "poll_interval", fmt.Errorf("%s is longer than poll_max_interval (%s); polling never waits longer than the ceiling",
			l.PollInterval, l.PollMaxInterval)
	}
	return "", nil
}
