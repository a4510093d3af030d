// Package config is sandbox's configuration, resolved in one place: the
// defaults, then the file (config.toml), then the environment, then the
// command line's flags. It knows the shape of every table and rejects what
// it does not know with file, line and key; each plugin's
// [plugins.NAME.config] table is left to the plugin.
//
// It imports no component: the components take the resolved values it
// returns (Plugin, Lifecycle, Profile, Engine, Server, Queue), so reading
// config.toml links no database, HTTP server or plugin host.
package config

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/sandboxhq/sandbox/core/configfile"
)

// DefaultPath is where the CLI looks without --config.
const DefaultPath = "config.toml"

// Config is a loaded, validated, resolved configuration.
type Config struct {
	// Path is the file's path as given.
	Path string
	// Data is the file's text; plugins decode their own tables from it.
	Data []byte
	// StateDir holds what sandbox remembers between runs (the quarantine,
	// the leases, the service's queue), absolute.
	StateDir string
	// Plugins are the [plugins.NAME] tables.
	Plugins map[string]Plugin
	// VMs are the [vms.NAME] tables.
	VMs map[string]VM
	// Lifecycle is the [lifecycle] table over the defaults: what a VM
	// without a table of its own gets.
	Lifecycle Lifecycle
	// Profiles are the [profiles.NAME] tables: the analyses, by name.
	Profiles map[string]Profile
	// Engine, Server and Queue are the [engine], [server] and [queue]
	// tables.
	Engine Engine
	Server Server
	Queue  Queue
}

// VM is one [vms.NAME] table: a VM sandbox manages and how.
type VM struct {
	// Plugin names the plugin that drives the VM; empty when only one
	// plugin is configured or when a single plugin lists the VM.
	Plugin string
	// Lifecycle is the VM's settings: [lifecycle], then its own keys.
	Lifecycle Lifecycle
}

// vmTable is the TOML form of VM: the plugin, and every [lifecycle] key for
// this VM only.
type vmTable struct {
	Plugin string `toml:"plugin"`
	lifecycleTable
}

// file is the document's shape.
type file struct {
	StateDir  string                  `toml:"state_dir"`
	Plugins   map[string]pluginTable  `toml:"plugins"`
	Lifecycle lifecycleTable          `toml:"lifecycle"`
	VMs       map[string]vmTable      `toml:"vms"`
	Profiles  map[string]profileTable `toml:"profiles"`
	Engine    engineTable             `toml:"engine"`
	Server    serverTable             `toml:"server"`
	Queue     queueTable              `toml:"queue"`
}

// ProfileNames returns the profiles' names in order.
func (c *Config) ProfileNames() []string { return sortedKeys(c.Profiles) }

// LifecycleOf returns the settings of the named VM: its own table's, or
// the [lifecycle] table's for a VM without one.
func (c *Config) LifecycleOf(vm string) Lifecycle {
	if v, ok := c.VMs[vm]; ok {
		return v.Lifecycle
	}
	return c.Lifecycle
}

// Env reads the environment: os.LookupEnv, or a map in tests.
type Env func(name string) (string, bool)

// Load reads and resolves the file at path, with the process's
// environment. Every mistake in the file comes back as a
// *configfile.Error naming the file, the line and the key.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("configuration file %s does not exist: pass --config FILE or create it (see docs/configuration.md)", path)
		}
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse resolves configuration text with the process's environment; path
// names it in errors and anchors its relative paths.
func Parse(path string, data []byte) (*Config, error) {
	return ParseEnv(path, data, os.LookupEnv)
}

// ParseEnv resolves configuration text with the environment env.
func ParseEnv(path string, data []byte, env Env) (*Config, error) {
	doc := configfile.Document{File: path, Data: data}
	var f file
	if err := doc.Decode(&f, configfile.Ignore("plugins.*.config")); err != nil {
		return nil, err
	}
	c := &Config{Path: path, Data: data, Plugins: map[string]Plugin{}, VMs: map[string]VM{}, Profiles: map[string]Profile{}}
	for _, name := range sortedKeys(f.Plugins) {
		p, key, err := f.Plugins[name].resolve()
		if err != nil {
			return nil, doc.Errorf([]string{"plugins", name, key}, "%v", err)
		}
		c.Plugins[name] = p
	}
	if key, err := f.Lifecycle.validate(); err != nil {
		return nil, doc.Errorf([]string{"lifecycle", key}, "%v", err)
	}
	c.Lifecycle = DefaultLifecycle().apply(f.Lifecycle)
	if key, err := c.Lifecycle.validate(); err != nil {
		return nil, doc.Errorf([]string{"lifecycle", key}, "%v", err)
	}
	for _, name := range sortedKeys(f.VMs) {
		t := f.VMs[name]
		if key, err := t.lifecycleTable.validate(); err != nil {
			return nil, doc.Errorf([]string{"vms", name, key}, "%v", err)
		}
		vm := VM{Plugin: t.Plugin, Lifecycle: c.Lifecycle.apply(t.lifecycleTable)}
		if key, err := vm.Lifecycle.validate(); err != nil {
			return nil, doc.Errorf([]string{"vms", name, key}, "%v", err)
		}
		if vm.Plugin != "" {
			if _, ok := f.Plugins[vm.Plugin]; !ok {
				return nil, doc.Errorf([]string{"vms", name, "plugin"},
					"no plugin named %q; declare [plugins.%s] or fix the name", vm.Plugin, vm.Plugin)
			}
		}
		c.VMs[name] = vm
	}
	for _, name := range sortedKeys(f.Profiles) {
		p, key, err := f.Profiles[name].resolve(name)
		if err != nil {
			at := []string{"profiles", name}
			if key != "" {
				at = append(at, strings.Split(key, ".")...)
			}
			return nil, doc.Errorf(at, "%v", err)
		}
		c.Profiles[name] = p
	}
	for _, t := range []struct {
		table    string
		validate func() (string, error)
	}{{"engine", f.Engine.validate}, {"server", f.Server.validate}, {"queue", f.Queue.validate}} {
		if key, err := t.validate(); err != nil {
			return nil, doc.Errorf([]string{t.table, key}, "%v", err)
		}
	}
	dir := filepath.Dir(path)
	c.Engine = Engine{MaxStarting: f.Engine.MaxStarting, OutDir: absFrom(dir, f.Engine.OutDir, "results")}
	if c.Engine.MaxStarting == 0 {
		c.Engine.MaxStarting = DefaultMaxStarting
	}
	c.StateDir = f.StateDir
	if c.StateDir == "" {
		c.StateDir = defaultStateDir(env)
	} else {
		c.StateDir = absFrom(dir, c.StateDir, "")
	}
	c.Server = f.Server.resolve()
	if tok, ok := env(TokenEnv); ok && tok != "" {
		if err := checkToken(tok); err != nil {
			return nil, fmt.Errorf("%s: %v", TokenEnv, err)
		}
		c.Server.Token = tok
	}
	c.Queue = Queue{Database: f.Queue.Database, Host: f.Queue.Host, DeadAfter: DefaultDeadAfter, MaxAttempts: f.Queue.MaxAttempts,
		ArtifactLimit: f.Queue.ArtifactLimit, Retention: DefaultRetention}
	if f.Queue.DeadAfter != nil {
		c.Queue.DeadAfter = *f.Queue.DeadAfter
	}
	if f.Queue.Retention != nil {
		c.Queue.Retention = *f.Queue.Retention
	}
	if c.Queue.ArtifactLimit == 0 {
		c.Queue.ArtifactLimit = DefaultArtifactLimit
	}
	if c.Queue.MaxAttempts == 0 {
		c.Queue.MaxAttempts = DefaultMaxAttempts
	}
	if c.Queue.Host == "" {
		// Left empty when the machine has no name: serve then asks for one.
		c.Queue.Host, _ = os.Hostname()
	}
	return c, nil
}

// absFrom makes p (or def when p is empty) absolute against dir.
func absFrom(dir, p, def string) string {
	if p == "" {
		p = def
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// Flags are the command line's settings: the last layer, over the file and
// the environment. A zero field leaves the value below it.
type Flags struct {
	// OutDir is --out: where reports go.
	OutDir string
	// MaxStarting is --max-starting.
	MaxStarting int
	// Listen, Database and Host are serve's --listen, --database, --host.
	Listen   string
	Database string
	Host     string
}

// FlagError is a flag whose value cannot be used, named as typed.
type FlagError struct {
	// Flag is the flag, e.g. "--database".
	Flag string
	// Err says what is wrong.
	Err error
}

func (e *FlagError) Error() string { return e.Flag + ": " + e.Err.Error() }

// Unwrap returns what is wrong.
func (e *FlagError) Unwrap() error { return e.Err }

// Apply lays the flags over the configuration.
func (c *Config) Apply(f Flags) error {
	if f.MaxStarting < 0 {
		return &FlagError{"--max-starting", fmt.Errorf("%d: want a positive number (0: the [engine] setting)", f.MaxStarting)}
	}
	if err := checkDatabase(f.Database); err != nil {
		return &FlagError{"--database", err}
	}
	if err := checkHost(f.Host); err != nil {
		return &FlagError{"--host", err}
	}
	if f.OutDir != "" {
		c.Engine.OutDir = absFrom("", f.OutDir, "")
	}
	if f.MaxStarting > 0 {
		c.Engine.MaxStarting = f.MaxStarting
	}
	if f.Listen != "" {
		c.Server.Listen = f.Listen
	}
	if f.Database != "" {
		c.Queue.Database = f.Database
	}
	if f.Host != "" {
		c.Queue.Host = f.Host
	}
	return nil
}

// defaultStateDir is $XDG_STATE_HOME/sandbox, else ~/.local/state/sandbox
// with the home directory from $HOME or, without it, from the user
// database. Only when neither knows a home is it a directory under the
// system's temporary directory, named for the user (statedir refuses it
// if another user made it first).
func defaultStateDir(env Env) string {
	if d, _ := env("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "sandbox")
	}
	home, _ := env("HOME")
	if home == "" {
		if u, err := user.Current(); err == nil {
			home = u.HomeDir
		}
	}
	if home != "" {
		return filepath.Join(home, ".local", "state", "sandbox")
	}
	who := strconv.Itoa(os.Geteuid())
	if u, err := user.Current(); err == nil {
		who = u.Uid
	}
	return filepath.Join(os.TempDir(), "sandbox-state-"+who)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
