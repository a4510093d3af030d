package vboxmanage

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/sdk"
)

// Config is the plugin's table in config.toml. Every key is optional;
// written out with the defaults of Defaults it reads:
//
//	[plugins.vbox.config]
//	path = ""              # VBoxManage; empty: search (see location.Find)
//	user_home = ""         # VBOX_USER_HOME for every invocation
//	temp_dir = ""          # where guest password files go; empty: the OS default
//	max_output = 16777216  # bytes of a guest command's stdout/stderr kept
//	max_copy_out = 1073741824  # bytes of a guest file copy_out takes
//
//	[plugins.vbox.config.timeouts]   # per invocation; killed when passed
//	command = "30s"
//	start = "2m"
//	poweroff = "1m"
//	restore = "5m"
//	copy = "5m"
//
//	[plugins.vbox.config.retry]      # waiting out "already locked" and the like
//	locked = "15s"
//	initial = "50ms"
//	max = "1s"
//
//	[plugins.vbox.config.unlock]
//	grace = "5s"           # then emergencystop kills the exiting VM process
//
//	[plugins.vbox.config.cleanup]
//	stop_wait = "30s"      # then emergencystop kills a VM that will not stop
//
//	[plugins.vbox.config.guest]
//	username = ""
//	password_file = ""     # or password_env = "NAME"; never the password itself
//	domain = ""
//	ready_wait = "1m"      # retry while the guest execution service is not ready
//
//	[plugins.vbox.config.vms."win10-64-defender".guest]
//	username = "..."       # per-VM credentials replace the [guest] table
type Config struct {
	// Path is the VBoxManage executable, relative to the configuration
	// file's directory if not absolute. Empty: search the usual places.
	Path string `toml:"path"`
	// UserHome sets VBOX_USER_HOME for every invocation: which user's
	// VirtualBox registry the driver operates when it runs as a service.
	UserHome string `toml:"user_home"`
	// TempDir is where guest password files are written (mode 0600, one
	// per guest operation, removed afterwards). Empty: the OS default.
	TempDir string `toml:"temp_dir"`
	// MaxOutput bounds, in bytes, the stdout and stderr of a guest
	// command that Exec returns.
	MaxOutput int `toml:"max_output"`
	// MaxCopyOut bounds, in bytes, a guest file CopyOut takes: VBoxManage
	// is stopped once it wrote that much, the copy fails and no host file
	// is left (contract §9.5).
	MaxCopyOut int64 `toml:"max_copy_out"`

	// Timeouts is the [timeouts] table: per-invocation deadlines.
	Timeouts Timeouts `toml:"timeouts"`
	// Retry is the [retry] table: waiting out transient refusals.
	Retry Retry `toml:"retry"`
	// Unlock is the [unlock] table.
	Unlock Unlock `toml:"unlock"`
	// Cleanup is the [cleanup] table.
	Cleanup Cleanup `toml:"cleanup"`
	// Guest is the [guest] table: credentials for guest operations.
	Guest Guest `toml:"guest"`
	// VMs holds per-VM settings, keyed by the VM's name as used in
	// operations.
	VMs map[string]VMConfig `toml:"vms"`
}

// Timeouts bound single VBoxManage invocations; a process still running at
// its deadline is killed and the operation answers timeout.
type Timeouts struct {
	// Command bounds any invocation not listed below.
	Command time.Duration `toml:"command"`
	// Start bounds startvm, which returns once the VM process runs.
	Start time.Duration `toml:"start"`
	// PowerOff bounds controlvm poweroff, the command most often seen to
	// hang.
	PowerOff time.Duration `toml:"poweroff"`
	// Restore bounds a snapshot restore.
	Restore time.Duration `toml:"restore"`
	// Copy bounds a guest file copy.
	Copy time.Duration `toml:"copy"`
}

// Retry says how the driver waits out transient refusals: a session that
// is still being torn down, an object that is "not ready".
type Retry struct {
	// Locked is how long a command refused because the VM's session is
	// held is tried again before the operation answers locked.
	Locked time.Duration `toml:"locked"`
	// Initial is the first pause between attempts and between state
	// polls; the pause doubles, with jitter, up to Max.
	Initial time.Duration `toml:"initial"`
	// Max caps the pause.
	Max time.Duration `toml:"max"`
}

// Unlock configures how Unlock frees a session that outlived its VM.
type Unlock struct {
	// Grace is how long Unlock waits for the VM process to finish exiting
	// by itself before it kills it with `startvm --type emergencystop`
	// (VirtualBox 5.1 and later).
	Grace time.Duration `toml:"grace"`
}

// Cleanup configures the driver's native cleanup.
type Cleanup struct {
	// StopWait is how long cleanup waits for a powered-off VM to reach an
	// off state before it kills the VM process. A VM found starting gets
	// at most ten seconds of it to run, since it cannot be powered off
	// before.
	StopWait time.Duration `toml:"stop_wait"`
}

// Guest holds the credentials guest operations log on with.
type Guest struct {
	// Username is the guest account.
	Username string `toml:"username"`
	// PasswordFile is a file whose first line is the password, relative
	// to the configuration file's directory if not absolute.
	PasswordFile string `toml:"password_file"`
	// PasswordEnv names an environment variable of the plugin process
	// holding the password.
	PasswordEnv string `toml:"password_env"`
	// Domain is the Windows logon domain, if any.
	Domain string `toml:"domain"`
	// ReadyWait is how long a guest operation retries while the guest
	// execution service answers "not ready (yet)", as it does while the
	// guest boots.
	ReadyWait time.Duration `toml:"ready_wait"`
}

// VMConfig is one VM's own settings.
type VMConfig struct {
	// Guest replaces the plugin-wide guest credentials for this VM.
	Guest *Guest `toml:"guest"`
}

// Defaults returns the configuration used for every key left unset.
func Defaults() Config {
	return Config{
		MaxOutput:  16 << 20,
		MaxCopyOut: 1 << 30,
		Timeouts: Timeouts{
			Command:  30 * time.Second,
			Start:    2 * time.Minute,
			PowerOff: time.Minute,
			Restore:  5 * time.Minute,
			Copy:     5 * time.Minute,
		},
		Retry:   Retry{Locked: 15 * time.Second, Initial: 50 * time.Millisecond, Max: time.Second},
		Unlock:  Unlock{Grace: 5 * time.Second},
		Cleanup: Cleanup{StopWait: 30 * time.Second},
		Guest:   Guest{ReadyWait: time.Minute},
	}
}

// secret holds a password so that no format verb, log line or panic
// prints it.
type secret struct{ value string }

// String keeps the password out of %s and %v.
func (secret) String() string { return "[redacted]" }

// GoString keeps the password out of %#v.
func (secret) GoString() string { return "[redacted]" }

// credentials are resolved guest credentials.
type credentials struct {
	username, domain string
	password         secret
	readyWait        time.Duration
}

// settings is a validated Config with secrets loaded.
type settings struct {
	Config
	guest   *credentials
	vmGuest map[string]*credentials
	// startingGrace is the constant of that name; tests shorten it.
	startingGrace time.Duration
}

// load decodes and validates the plugin's table.
func load(cfg sdk.Config) (*settings, error) {
	c := Defaults()
	if err := cfg.Decode(&c); err != nil {
		return nil, err
	}
	c.Path = cfg.Path(c.Path)
	c.UserHome = cfg.Path(c.UserHome)
	c.TempDir = cfg.Path(c.TempDir)
	for key, d := range map[string]time.Duration{
		"timeouts.command": c.Timeouts.Command, "timeouts.start": c.Timeouts.Start,
		"timeouts.poweroff": c.Timeouts.PowerOff, "timeouts.restore": c.Timeouts.Restore,
		"timeouts.copy": c.Timeouts.Copy, "retry.initial": c.Retry.Initial, "retry.max": c.Retry.Max,
	} {
		if d <= 0 {
			return nil, cfg.Errorf(strings.Split(key, "."), "must be a positive duration such as \"30s\"")
		}
	}
	for key, d := range map[string]time.Duration{
		"retry.locked": c.Retry.Locked, "unlock.grace": c.Unlock.Grace,
		"cleanup.stop_wait": c.Cleanup.StopWait, "guest.ready_wait": c.Guest.ReadyWait,
	} {
		if d < 0 {
			return nil, cfg.Errorf(strings.Split(key, "."), "must not be negative")
		}
	}
	if c.Retry.Initial < time.Millisecond {
		return nil, cfg.Errorf([]string{"retry", "initial"}, "must be at least 1ms: polling more often only keeps VirtualBox busy")
	}
	if c.Retry.Max < c.Retry.Initial {
		return nil, cfg.Errorf([]string{"retry", "max"}, "must not be shorter than retry.initial (%s)", c.Retry.Initial)
	}
	if c.MaxOutput <= 0 {
		return nil, cfg.Errorf([]string{"max_output"}, "must be a positive number of bytes")
	}
	if c.MaxCopyOut <= 0 {
		return nil, cfg.Errorf([]string{"max_copy_out"}, "must be a positive number of bytes, e.g. 1073741824")
	}
	s := &settings{Config: c, vmGuest: map[string]*credentials{}, startingGrace: startingGrace}
	var err error
	if s.guest, err = resolveGuest(cfg, []string{"guest"}, c.Guest, c.Guest.ReadyWait); err != nil {
		return nil, err
	}
	for name, vm := range c.VMs {
		if vm.Guest == nil {
			continue
		}
		wait := vm.Guest.ReadyWait
		if wait == 0 {
			wait = c.Guest.ReadyWait
		}
		if s.vmGuest[name], err = resolveGuest(cfg, []string{"vms", name, "guest"}, *vm.Guest, wait); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// resolveGuest loads one credentials table; nil when it names no user.
func resolveGuest(cfg sdk.Config, key []string, g Guest, wait time.Duration) (*credentials, error) {
	at := func(k string) []string { return append(append([]string{}, key...), k) }
	if g.Username == "" {
		if g.PasswordFile != "" || g.PasswordEnv != "" {
			return nil, cfg.Errorf(at("username"), "is required when a password is configured")
		}
		return nil, nil
	}
	switch {
	case g.PasswordFile != "" && g.PasswordEnv != "":
		return nil, cfg.Errorf(at("password_env"), "set either password_file or password_env, not both")
	case g.PasswordFile == "" && g.PasswordEnv == "":
		return nil, cfg.Errorf(at("password_file"), "is required with username (or set password_env); the password never goes in config.toml")
	}
	cr := &credentials{username: g.Username, domain: g.Domain, readyWait: wait}
	if g.PasswordFile != "" {
		path := cfg.Path(g.PasswordFile)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, cfg.Errorf(at("password_file"), "cannot read the password: %v", err)
		}
		if fi, err := os.Stat(path); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o006 != 0 {
			return nil, cfg.Errorf(at("password_file"), "%s can be read or changed by other users (mode %s): run `chmod 600 %s`",
				path, fi.Mode().Perm(), path)
		}
		line, _, _ := strings.Cut(string(data), "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			return nil, cfg.Errorf(at("password_file"), "%s holds no password: its first line is empty", path)
		}
		cr.password = secret{line}
		return cr, nil
	}
	v, ok := os.LookupEnv(g.PasswordEnv)
	if !ok {
		return nil, cfg.Errorf(at("password_env"), "environment variable %s is not set in the plugin's environment (the host passes only allowed variables)", g.PasswordEnv)
	}
	cr.password = secret{v}
	return cr, nil
}

// credentialsFor returns the guest credentials for vm.
func (s *settings) credentialsFor(vm string) (*credentials, error) {
	if c, ok := s.vmGuest[vm]; ok {
		return c, nil
	}
	if s.guest != nil {
		return s.guest, nil
	}
	return nil, fmt.Errorf("no guest credentials configured for this VM; set guest.username and guest.password_file in the plugin's configuration")
}

// passwordEnvs names every variable a guest password comes from: none of
// them may reach VBoxManage, which reads the password from a file.
func (s *settings) passwordEnvs() []string {
	var names []string
	if s.Guest.PasswordEnv != "" {
		names = append(names, s.Guest.PasswordEnv)
	}
	for _, vm := range s.VMs {
		if vm.Guest != nil && vm.Guest.PasswordEnv != "" {
			names = append(names, vm.Guest.PasswordEnv)
		}
	}
	return names
}

// hasGuestCredentials reports whether guest operations can log on to any VM.
func (s *settings) hasGuestCredentials() bool {
	return s.guest != nil || len(s.vmGuest) > 0
}
