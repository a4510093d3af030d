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
	"slices"

	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/host"
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
}

// VM is one [vms.NAME] table: a VM sandbox manages and how.
type VM struct {
	// Plugin names the plugin that drives the VM. Optional when only one
	// plugin is configured or when a single plugin lists the VM.
	Plugin string `toml:"plugin"`
}

// file is the document's shape.
type file struct {
	Plugins map[string]host.PluginConfig `toml:"plugins"`
	VMs     map[string]VM                `toml:"vms"`
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
	for _, name := range sortedKeys(f.VMs) {
		vm := f.VMs[name]
		if vm.Plugin != "" {
			if _, ok := f.Plugins[vm.Plugin]; !ok {
				return nil, doc.Errorf([]string{"vms", name, "plugin"},
					"no plugin named %q; declare [plugins.%s] or fix the name", vm.Plugin, vm.Plugin)
			}
		}
	}
	if f.Plugins == nil {
		f.Plugins = map[string]host.PluginConfig{}
	}
	if f.VMs == nil {
		f.VMs = map[string]VM{}
	}
	return &Config{Path: path, Data: data, Plugins: f.Plugins, VMs: f.VMs}, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
