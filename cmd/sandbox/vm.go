package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/fleet"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

func (a *app) vmCommand() *cobra.Command {
	vm := &cobra.Command{
		Use:   "vm",
		Short: "List VMs, show their state and run lifecycle operations on them",
		Args:  exactArgs(),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var plugin string
	vm.PersistentFlags().StringVar(&plugin, "plugin", "", "address the VM through this `PLUGIN` (default: found from the configuration or by listing)")
	vm.AddCommand(a.vmListCommand(), a.vmStatusCommand(&plugin))
	vm.AddCommand(a.lifecycleCommands(&plugin)...)
	return vm
}

func (a *app) vmListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every VM of every plugin",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := a.fleet()
			if err != nil {
				return err
			}
			entries, errs := f.List(a.context())
			msgs := make([]string, len(errs))
			for i, e := range errs {
				msgs[i] = e.Error()
			}
			if entries == nil {
				entries = []fleet.Entry{}
			}
			warnings := a.unlistedVMs(entries, errs)
			err = a.emit(map[string]any{"vms": entries, "errors": msgs, "warnings": warnings}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				if len(entries) > 0 || len(msgs) == 0 {
					fmt.Fprintln(tw, "PLUGIN\tVM\tPOWER\tID")
				}
				for _, e := range entries {
					power := string(e.Power)
					if !e.Listed {
						power += " (from config; the plugin cannot list)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Plugin, e.Name, power, orDash(e.ID))
				}
				_ = tw.Flush()
				for _, m := range append(msgs, warnings...) {
					fmt.Fprintf(a.errOut, "sandbox: %s\n", m)
				}
			})
			if err != nil {
				return err
			}
			if len(errs) > 0 {
				return errReported
			}
			return nil
		},
	}
}

// vmStatus is `sandbox vm status` in JSON.
type vmStatus struct {
	Plugin string `json:"plugin"`
	hypervisor.Status
	Quarantine *lifecycle.QuarantineEntry `json:"quarantine,omitempty"`
}

func (a *app) vmStatusCommand(plugin *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status VM",
		Short: "Show a VM's power state, session lock and current snapshot",
		Args:  exactArgs("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, m, vm, err := a.vmTarget(args[0], *plugin)
			if err != nil {
				return err
			}
			st, err := vm.Driver.Status(ctx, vm.Name)
			if err != nil {
				return err
			}
			out := vmStatus{Plugin: vm.Plugin, Status: st}
			q, quarantined, err := m.Quarantined(ctx, vm)
			if err != nil {
				return err
			}
			if quarantined {
				out.Quarantine = &q
			}
			return a.emit(out, func(w io.Writer) { printStatus(w, out) })
		},
	}
}

func printStatus(w io.Writer, s vmStatus) {
	st := s.Status
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "VM:\t%s\n", st.VM)
	fmt.Fprintf(tw, "Plugin:\t%s\n", s.Plugin)
	fmt.Fprintf(tw, "Power:\t%s (hypervisor says %q)\n", st.Power, st.Raw)
	fmt.Fprintf(tw, "Session lock:\t%s\n", st.Lock)
	fmt.Fprintf(tw, "Current snapshot:\t%s\n", orDash(st.CurrentSnapshot))
	if st.StateChanged.IsZero() {
		fmt.Fprintf(tw, "State changed:\t-\n")
	} else {
		fmt.Fprintf(tw, "State changed:\t%s (%s ago)\n", st.StateChanged.Format(time.RFC3339),
			time.Since(st.StateChanged).Round(time.Second))
	}
	if s.Quarantine != nil {
		fmt.Fprintf(tw, "Quarantined:\tsince %s: %s\n", s.Quarantine.Since.Format(time.RFC3339), s.Quarantine.Reason)
		fmt.Fprintf(tw, "\t(run `sandbox vm cleanup %s` once the cause is fixed)\n", st.VM)
	} else {
		fmt.Fprintf(tw, "Quarantined:\tno\n")
	}
	_ = tw.Flush()
}

// unlistedVMs warns about [vms.NAME] tables that name no listed VM: a typo
// there would silently leave the real VM on the default settings. Plugins
// that failed to answer are not held against the configuration.
func (a *app) unlistedVMs(entries []fleet.Entry, errs []error) []string {
	if len(errs) > 0 {
		return []string{}
	}
	listed := map[string]bool{}
	for _, e := range entries {
		listed[e.Name] = true
	}
	doc := configfile.Document{File: a.cfg.Path, Data: a.cfg.Data}
	warnings := []string{}
	for _, name := range slices.Sorted(maps.Keys(a.cfg.VMs)) {
		if !listed[name] {
			warnings = append(warnings, doc.Errorf([]string{"vms", name},
				"names a VM no plugin lists, so its settings apply to nothing; check the name against this list").Error())
		}
	}
	return warnings
}
