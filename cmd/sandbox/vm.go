package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/fleet"
	"github.com/sandboxhq/sandbox/core/hypervisor"
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
			err = a.emit(map[string]any{"vms": entries, "errors": msgs}, func(w io.Writer) {
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
				for _, m := range msgs {
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
}

func (a *app) vmStatusCommand(plugin *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status VM",
		Short: "Show a VM's power state, session lock and current snapshot",
		Args:  exactArgs("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := a.fleet()
			if err != nil {
				return err
			}
			ctx := a.context()
			name, d, err := f.Resolve(ctx, args[0], *plugin)
			if err != nil {
				return err
			}
			st, err := d.Status(ctx, args[0])
			if err != nil {
				return err
			}
			return a.emit(vmStatus{Plugin: name, Status: st}, func(w io.Writer) { printStatus(w, name, st) })
		},
	}
}

func printStatus(w io.Writer, plugin string, st hypervisor.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "VM:\t%s\n", st.VM)
	fmt.Fprintf(tw, "Plugin:\t%s\n", plugin)
	fmt.Fprintf(tw, "Power:\t%s (hypervisor says %q)\n", st.Power, st.Raw)
	fmt.Fprintf(tw, "Session lock:\t%s\n", st.Lock)
	fmt.Fprintf(tw, "Current snapshot:\t%s\n", orDash(st.CurrentSnapshot))
	if st.StateChanged.IsZero() {
		fmt.Fprintf(tw, "State changed:\t-\n")
	} else {
		fmt.Fprintf(tw, "State changed:\t%s (%s ago)\n", st.StateChanged.Format(time.RFC3339),
			time.Since(st.StateChanged).Round(time.Second))
	}
	_ = tw.Flush()
}
