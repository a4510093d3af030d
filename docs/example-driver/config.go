package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Config is the driver's table in sandbox's config.toml,
// [plugins.procvm.config]. The SDK decodes it strictly: an unknown key or a
// wrong type is an error naming the file, the line and the key.
type Config struct {
	// state_dir: where the VMs' directories live (their disks, pid files and
	// current snapshots). Relative to the configuration file. Required.
	StateDir string `toml:"state_dir"`
	// vms: the VMs, by name.
	VMs map[string]VMConfig `toml:"vms"`
}

// VMConfig is one VM: a command and its snapshots.
type VMConfig struct {
	// command: the program and its arguments; it should run until stopped,
	// e.g. ["sleep", "3600"].
	Command []string `toml:"command"`
	// snapshots: snapshot name -> directory its disk is copied from,
	// relative to the configuration file. The first by name is the one a
	// new VM starts from.
	Snapshots map[string]string `toml:"snapshots"`
}

// check returns the key (relative to the driver's table) of the first
// mistake in c and what is wrong with it; the factory turns it into an
// error with the line of that key.
func (c Config) check() (key []string, msg string) {
	if c.StateDir == "" {
		return []string{"state_dir"}, "missing: set a directory for the VMs' state"
	}
	for _, name := range slices.Sorted(maps.Keys(c.VMs)) {
		vm := c.VMs[name]
		if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
			return []string{"vms", name}, "a VM name must be a plain file name"
		}
		if len(vm.Command) == 0 {
			return []string{"vms", name, "command"}, "missing: the program the VM runs"
		}
		if len(vm.Snapshots) == 0 {
			return []string{"vms", name, "snapshots"}, "missing: at least one snapshot directory"
		}
		for snap := range vm.Snapshots {
			if snap == "" {
				return []string{"vms", name, "snapshots"}, fmt.Sprintf("a snapshot needs a name (directory %q)", vm.Snapshots[snap])
			}
		}
	}
	return nil, ""
}
