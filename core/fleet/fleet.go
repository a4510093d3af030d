// Package fleet answers "which VMs are there, and which driver owns this
// one?" across every configured plugin, so that the CLI and the analysis
// engine address a VM by its name alone.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Fleet is every VM of every driver.
type Fleet struct {
	drivers  map[string]hypervisor.Driver
	names    []string
	assigned map[string]string
}

// New builds a fleet. drivers maps plugin names to drivers; assigned maps
// VM names to the plugin the configuration says drives them.
func New(drivers map[string]hypervisor.Driver, assigned map[string]string) *Fleet {
	names := make([]string, 0, len(drivers))
	for n := range drivers {
		names = append(names, n)
	}
	slices.Sort(names)
	return &Fleet{drivers: drivers, names: names, assigned: assigned}
}

// Entry is one VM and the plugin that drives it.
type Entry struct {
	// Plugin is the plugin's name in the configuration.
	Plugin string `json:"plugin"`
	hypervisor.VM
	// Listed is false for a VM known only from the configuration because
	// its driver cannot list (a protocol 1 plugin).
	Listed bool `json:"listed"`
}

// PluginError is a plugin that could not be asked.
type PluginError struct {
	// Plugin is the plugin's name.
	Plugin string
	// Err is why.
	Err error
}

// Error names the plugin unless its error already does.
func (e *PluginError) Error() string {
	msg := e.Err.Error()
	if strings.HasPrefix(msg, fmt.Sprintf("plugin %q", e.Plugin)) {
		return msg // the error already names the plugin
	}
	return fmt.Sprintf("plugin %q: %s", e.Plugin, msg)
}

// Unwrap returns the plugin's error.
func (e *PluginError) Unwrap() error { return e.Err }

// List asks every plugin for its VMs, in parallel. A plugin that cannot
// list contributes the VMs the configuration assigns to it. A plugin that
// fails does not hide the others: its error is returned alongside them.
func (f *Fleet) List(ctx context.Context) ([]Entry, []error) {
	results := make([][]Entry, len(f.names))
	errs := make([]error, len(f.names))
	var wg sync.WaitGroup
	for i, name := range f.names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.list(ctx, name)
		}()
	}
	wg.Wait()
	var all []Entry
	var failed []error
	for i := range f.names {
		all = append(all, results[i]...)
		if errs[i] != nil {
			failed = append(failed, errs[i])
		}
	}
	return all, failed
}

func (f *Fleet) list(ctx context.Context, plugin string) ([]Entry, error) {
	vms, err := f.drivers[plugin].ListVMs(ctx)
	if hypervisor.IsUnsupported(err) {
		var out []Entry
		for _, vm := range f.assignedTo(plugin) {
			out = append(out, Entry{Plugin: plugin, VM: hypervisor.VM{Name: vm, Power: hypervisor.PowerUnknown}})
		}
		return out, nil
	}
	if err != nil {
		return nil, &PluginError{Plugin: plugin, Err: err}
	}
	out := make([]Entry, len(vms))
	for i, vm := range vms {
		out[i] = Entry{Plugin: plugin, VM: vm, Listed: true}
	}
	return out, nil
}

func (f *Fleet) assignedTo(plugin string) []string {
	var vms []string
	for vm, p := range f.assigned {
		if p == plugin || (p == "" && len(f.names) == 1) {
			vms = append(vms, vm)
		}
	}
	slices.Sort(vms)
	return vms
}

// ErrNoSuchVM is matched by Resolve's error for a VM no plugin has.
var ErrNoSuchVM = errors.New("no plugin has this VM")

// Resolve finds the driver of vm. plugin, when not empty, names it
// outright. Otherwise the configuration's assignment decides, then a single
// configured plugin, then a search of every plugin's list.
func (f *Fleet) Resolve(ctx context.Context, vm, plugin string) (string, hypervisor.Driver, error) {
	if plugin == "" {
		plugin = f.assigned[vm]
	}
	if plugin == "" && len(f.names) == 1 {
		plugin = f.names[0]
	}
	if plugin != "" {
		d, ok := f.drivers[plugin]
		if !ok {
			return "", nil, fmt.Errorf("no plugin named %q; configured: %s", plugin, strings.Join(f.names, ", "))
		}
		return plugin, d, nil
	}
	entries, errs := f.List(ctx)
	var owners []string
	for _, e := range entries {
		if e.Name == vm {
			owners = append(owners, e.Plugin)
		}
	}
	switch len(owners) {
	case 1:
		return owners[0], f.drivers[owners[0]], nil
	case 0:
		if len(f.names) == 0 {
			return "", nil, fmt.Errorf("VM %q: %w: no plugin is configured; add a [plugins.NAME] table", vm, ErrNoSuchVM)
		}
		err := fmt.Errorf("VM %q: %w (searched %s); check the name with `sandbox vm list`", vm, ErrNoSuchVM, strings.Join(f.names, ", "))
		return "", nil, errors.Join(append([]error{err}, errs...)...)
	}
	return "", nil, fmt.Errorf("VM %q exists in several plugins (%s): pick one with --plugin or set [vms.%q] plugin",
		vm, strings.Join(owners, ", "), vm)
}
