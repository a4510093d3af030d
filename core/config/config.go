// Package config loads sandbox's configuration file (config.toml): the
// plugins to launch and the VMs to manage. Each component owns the TOML
// struct of its own table (host.PluginConfig, lifecycle settings); this
// package composes them, rejects what it does not know with file, line and
// key, and leaves each plugin's [plugins.NAME.config] table to the plugin.
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

	"github.com/sandboxhq/sandbox/core/api"
	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
)

// DefaultPath is where the CLI looks without --config.
const DefaultPath = "config.toml"

// Config is a loaded, validated configuration file.
type Config struct {
	// Path is the file's path as given.
	Path string
	// Data is the file's text; plugins decode their own tables from it.
	Data []byte
	// Plugins are the [plugins.NAME] tables.
	Plugins map[string]host.PluginConfig
	// VMs are the [vms.NAME] tables.
	VMs map[string]VM
	// StateDir holds what sandbox remembers between runs (the quarantine).
	StateDir string
	// Lifecycle is the [lifecycle] table: settings for every VM.
	Lifecycle lifecycle.Overrides
	// Profiles are the [profiles.NAME] tables: the analyses, by name.
	Profiles map[string]engine.Profile
	// Engine is the [engine] table, with out_dir made absolute against
	// the file's directory.
	Engine engine.Settings
	// Server and Queue are the [server] and [queue] tables of `sandbox
	// serve`.
	Server api.Settings
	Queue  queue.Settings
}

// ProfileNames returns the profiles' names in order.
func (c *Config) ProfileNames() []string { return sortedKeys(c.Profiles) }

// VM is one [vms.NAME] table: a VM sandbox manages and how. Besides the
// plugin it takes every [lifecycle] key, for this VM only.
type VM struct {
	// Plugin names the plugin that drives the VM. Optional when only one
	// plugin is configured or when a single plugin lists the VM.
	Plugin string `toml:"plugin"`
	lifecycle.Overrides
}

// file is the document's shape.
type file struct {
	StateDir  string                          `toml:"state_dir"`
	Plugins   map[string]host.PluginConfig    `toml:"plugins"`
	Lifecycle lifecycle.Overrides             `toml:"lifecycle"`
	VMs       map[string]VM                   `toml:"vms"`
	Profiles  map[string]engine.ProfileConfig `toml:"profiles"`
	Engine    engine.Settings                 `toml:"engine"`
	Server    api.Settings                    `toml:"server"`
	Queue     queue.Settings                  `toml:"queue"`
}

// Settings returns the lifecycle settings of the named VM: the defaults,
// overridden by [lifecycle], overridden by [vms.NAME]. A VM without a table
// gets the first two.
func (c *Config) Settings(vm string) lifecycle.Settings {
	return lifecycle.Defaults().Apply(c.Lifecycle).Apply(c.VMs[vm].Overrides)
}

// Load reads and validates the file at path. Every mistake comes back as a
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

// Parse validates configuration text; path names it in errors.
func Parse(path string, data []byte) (*Config, error) {
	doc := configfile.Document{File: path, Data: data}
	var f file
	if err := doc.Decode(&f, configfile.Ignore("plugins.*.config")); err != nil {
		return nil, err
	}
	for _, name := range sortedKeys(f.Plugins) {
		if key, err := f.Plugins[name].Validate(); err != nil {
			return nil, doc.Errorf([]string{"plugins", name, key}, "%v", err)
		}
	}
	if key, err := f.Lifecycle.Validate(); err != nil {
		return nil, doc.Errorf([]string{"lifecycle", key}, "%v", err)
	}
	if key, err := lifecycle.Defaults().Apply(f.Lifecycle).Validate(); err != nil {
		return nil, doc.Errorf([]string{"lifecycle", key}, "%v", err)
	}
	for _, name := range sortedKeys(f.VMs) {
		vm := f.VMs[name]
		if key, err := vm.Validate(); err != nil {
			return nil, doc.Errorf([]string{"vms", name, key}, "%v", err)
		}
		if key, err := lifecycle.Defaults().Apply(f.Lifecycle).Apply(vm.Overrides).Validate(); err != nil {
			return nil, doc.Errorf([]string{"vms", name, key}, "%v", err)
		}
		if vm.Plugin != "" {
			if _, ok := f.Plugins[vm.Plugin]; !ok {
				return nil, doc.Errorf([]string{"vms", name, "plugin"},
					"no plugin named %q; declare [plugins.%s] or fix the name", vm.Plugin, vm.Plugin)
			}
		}
	}
	profiles := map[string]engine.Profile{}
	for _, name := range sortedKeys(f.Profiles) {
		p, key, err := f.Profiles[name].Resolve(name)
		if err != nil {
			at := []string{"profiles", name}
			if key != "" {
				at = append(at, strings.Split(key, ".")...)
			}
			return nil, doc.Errorf(at, "%v", err)
		}
		profiles[name] = p
	}
	if key, err := f.Engine.Validate(); err != nil {
		return nil, doc.Errorf([]string{"engine", key}, "%v", err)
	}
	if key, err := f.Server.Validate(); err != nil {
		return nil, doc.Errorf([]string{"server", key}, "%v", err)
	}
	if key, err := f.Queue.Validate(); err != nil {
		return nil, doc.Errorf([]string{"queue", key}, "%v", err)
	}
	if f.Engine.OutDir == "" {
		f.Engine.OutDir = "results"
	}
	if !filepath.IsAbs(f.Engine.OutDir) {
		f.Engine.OutDir = filepath.Join(filepath.Dir(path), f.Engine.OutDir)
	}
	if f.Engine.MaxStarting == 0 {
		f.Engine.MaxStarting = engine.DefaultMaxStarting
	}
	if f.Plugins == nil {
		f.Plugins = map[string]host.PluginConfig{}
	}
	if f.VMs == nil {
		f.VMs = map[string]VM{}
	}
	stateDir := f.StateDir
	if stateDir == "" {
		stateDir = defaultStateDir()
	} else if !filepath.IsAbs(stateDir) {
		stateDir = filepath.Join(filepath.Dir(path), stateDir)
	}
	return &Config{Path: path, Data: data, Plugins: f.Plugins, VMs: f.VMs, StateDir: stateDir, Lifecycle: f.Lifecycle,
		Profiles: profiles, Engine: f.Engine, Server: f.Server, Queue: f.Queue}, nil
}

// defaultStateDir is $XDG_STATE_HOME/sandbox, else ~/.local/state/sandbox
// with the home directory from $HOME or, without it, from the user
// database. Only when neither knows a home is it a directory under the
// system's temporary directory, named for the user (statedir.Open refuses
// it if another user made it first).
func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "sandbox")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		if u, uerr := user.Current(); uerr == nil {
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
