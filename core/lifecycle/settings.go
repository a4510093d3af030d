package lifecycle

import (
	"fmt"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Settings are the lifecycle knobs of one VM, resolved: the defaults, then
// the [lifecycle] table of config.toml, then the VM's own [vms.NAME] table.
type Settings struct {
	// StopLadder is the order of stop methods tried, gentlest first. A VM
	// that is restored after every task can leave out acpi.
	StopLadder []hypervisor.StopMethod
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
	// NativeCleanup lets Cleanup and EnsureStopped use the driver's own
	// cleanup when it declares one. The driver then decides how to stop
	// (the stop ladder and the rung, release, unlock and restore deadlines
	// do not apply); set it false to have the core compose the cleanup
	// with the VM's own settings.
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

// Defaults returns the settings every VM starts from. docs/lifecycle.md
// documents each value; change them here and there together.
func Defaults() Settings {
	return Settings{
		StopLadder:       []hypervisor.StopMethod{hypervisor.StopACPI, hypervisor.StopPowerOff, hypervisor.StopEmergency},
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

// MinPollInterval is the shortest wait between two status polls that
// poll_interval and poll_max_interval accept.
const MinPollInterval = time.Millisecond

// RungTimeout returns the deadline of the stop rung that uses m.
func (s Settings) RungTimeout(m hypervisor.StopMethod) time.Duration {
	switch m {
	case hypervisor.StopACPI:
		return s.ACPITimeout
	case hypervisor.StopPowerOff:
		return s.PowerOffTimeout
	default:
		return s.EmergencyTimeout
	}
}

// Overrides is the TOML form of Settings, used for [lifecycle] and inside
// each [vms.NAME] table: a key that is set replaces the value below it, a
// key left out inherits it. A config.toml written before any of these keys
// existed therefore keeps working, on the defaults.
type Overrides struct {
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

// Apply returns s with every key set in o replaced.
func (s Settings) Apply(o Overrides) Settings {
	if o.StopLadder != nil {
		s.StopLadder = make([]hypervisor.StopMethod, len(o.StopLadder))
		for i, m := range o.StopLadder {
			s.StopLadder[i] = hypervisor.StopMethod(m)
		}
	}
	set := func(dst *time.Duration, src *time.Duration) {
		if src != nil {
			*dst = *src
		}
	}
	set(&s.ACPITimeout, o.ACPITimeout)
	set(&s.PowerOffTimeout, o.PowerOffTimeout)
	set(&s.EmergencyTimeout, o.EmergencyTimeout)
	set(&s.ReleaseTimeout, o.ReleaseTimeout)
	set(&s.UnlockTimeout, o.UnlockTimeout)
	set(&s.SettleDelay, o.SettleDelay)
	set(&s.RestoreTimeout, o.RestoreTimeout)
	set(&s.StartTimeout, o.StartTimeout)
	set(&s.CleanupTimeout, o.CleanupTimeout)
	set(&s.StatusTimeout, o.StatusTimeout)
	set(&s.PollInterval, o.PollInterval)
	set(&s.PollMaxInterval, o.PollMaxInterval)
	if o.Snapshot != nil {
		s.Snapshot = *o.Snapshot
	}
	if o.RestoreOnCleanup != nil {
		s.RestoreOnCleanup = *o.RestoreOnCleanup
	}
	if o.NativeCleanup != nil {
		s.NativeCleanup = *o.NativeCleanup
	}
	return s
}

// Validate checks what no single key can: settings that contradict each
// other once the layers are merged. It returns the key to blame.
func (s Settings) Validate() (key string, err error) {
	if s.PollInterval > s.PollMaxInterval {
		return "poll_interval", fmt.Errorf("%s is longer than poll_max_interval (%s); polling never waits longer than the ceiling",
			s.PollInterval, s.PollMaxInterval)
	}
	return "", nil
}

// Validate returns the key (as written in config.toml) of the first bad
// setting and what is wrong with it.
func (o Overrides) Validate() (key string, err error) {
	seen := map[string]bool{}
	for _, m := range o.StopLadder {
		if !hypervisor.StopMethod(m).Valid() {
			return "stop_ladder", fmt.Errorf("unknown stop method %q; use acpi, poweroff or emergency", m)
		}
		if seen[m] {
			return "stop_ladder", fmt.Errorf("%q appears twice", m)
		}
		seen[m] = true
	}
	if o.StopLadder != nil && len(o.StopLadder) == 0 {
		return "stop_ladder", fmt.Errorf("must name at least one stop method")
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
	}{
		{"acpi_timeout", o.ACPITimeout}, {"poweroff_timeout", o.PowerOffTimeout},
		{"emergency_timeout", o.EmergencyTimeout}, {"release_timeout", o.ReleaseTimeout},
		{"unlock_timeout", o.UnlockTimeout}, {"restore_timeout", o.RestoreTimeout},
		{"start_timeout", o.StartTimeout}, {"cleanup_timeout", o.CleanupTimeout}, {"status_timeout", o.StatusTimeout},
		{"poll_interval", o.PollInterval}, {"poll_max_interval", o.PollMaxInterval},
	} {
		if d.v != nil && *d.v <= 0 {
			return d.key, fmt.Errorf("must be a positive duration such as \"15s\"")
		}
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
	}{{"poll_interval", o.PollInterval}, {"poll_max_interval", o.PollMaxInterval}} {
		if d.v != nil && *d.v < MinPollInterval {
			return d.key, fmt.Errorf("must be at least %s: polling more often only keeps the hypervisor busy", MinPollInterval)
		}
	}
	if o.SettleDelay != nil && *o.SettleDelay < 0 {
		return "settle_delay", fmt.Errorf("must not be negative")
	}
	return "", nil
}
