package main

import (
	"errors"
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
	"github.com/sandboxhq/sandbox/core/statedir"
)

func (a *app) vmCommand() *cobra.Command {
	vm := &cobra.Command{
		Use:   "vm",
		Short: "List VMs, show their state and run lifecycle operations on them",
		Args:  noSubcommand,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var plugin string
	vm.PersistentFlags().StringVar(&plugin, "plugin", "", "address the VM through this `PLUGIN` (default: found from the configuration or by listing)")
	vm.AddCommand(a.vmListCommand(), a.vmStatusCommand(&plugin), a.vmReconcileCommand(&plugin))
	vm.AddCommand(a.lifecycleCommands(&plugin)...)
	return vm
}

// vmRow is one VM in `sandbox vm list`: the VM, who holds its lease (or
// died holding it) and its quarantine.
type vmRow struct {
	fleet.Entry
	Lease      *statedir.LeaseInfo        `json:"lease,omitempty"`
	Quarantine *lifecycle.QuarantineEntry `json:"quarantine,omitempty"`
}

func (a *app) vmListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every VM of every plugin, who holds it and which are quarantined",
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
			rows, serr := a.vmRows(entries)
			if serr != nil {
				msgs = append(msgs, serr.Error())
			}
			err = a.emit(map[string]any{"vms": rows, "errors": msgs, "warnings": warnings}, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				if len(rows) > 0 || len(msgs) == 0 {
					fmt.Fprintln(tw, "PLUGIN\tVM\tPOWER\tID\tLEASE\tQUARANTINED")
				}
				for _, r := range rows {
					power := string(r.Power)
					if !r.Listed {
						power += " (from config; the plugin cannot list)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cell(r.Plugin), cell(r.Name), power, orDash(cell(r.ID)),
						leaseCell(r.Lease), quarantineCell(r.Quarantine))
				}
				_ = tw.Flush()
				for _, m := range append(msgs, warnings...) {
					fmt.Fprintf(a.errOut, "sandbox: %s\n", m)
				}
			})
			if err != nil {
				return err
			}
			if len(errs) > 0 || serr != nil {
				return errReported
			}
			return nil
		},
	}
}

// vmRows adds to each VM its lease and quarantine from the state
// directory. A state directory that cannot be read leaves them out and is
// reported; the VMs are listed all the same.
func (a *app) vmRows(entries []fleet.Entry) ([]vmRow, error) {
	rows := make([]vmRow, len(entries))
	for i, e := range entries {
		rows[i].Entry = e
	}
	if _, err := a.manager(); err != nil {
		return rows, err
	}
	quarantined, qerr := a.state.List()
	var errs []error
	if qerr != nil {
		errs = append(errs, qerr)
	}
	for i := range rows {
		key := rows[i].Plugin + "/" + rows[i].Name
		if q, ok := quarantined[key]; ok {
			rows[i].Quarantine = &q
		}
		lease, err := a.state.Lease(key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rows[i].Lease = lease
	}
	return rows, errors.Join(errs...)
}

// leaseCell says who holds a VM, or who died holding it.
func leaseCell(l *statedir.LeaseInfo) string {
	if l == nil {
		return "-"
	}
	who := fmt.Sprintf("pid %d (%s) since %s", l.PID, l.Command, l.Since.Local().Format(time.DateTime))
	if !l.Live {
		return "left by " + who + ", which died holding it: run `sandbox vm reconcile`"
	}
	return cell(who)
}

// quarantineCell says why a VM is quarantined.
func quarantineCell(q *lifecycle.QuarantineEntry) string {
	if q == nil {
		return "-"
	}
	reason := firstLine(q.Reason)
	if len(reason) > 80 {
		reason = reason[:77] + "..."
	}
	return cell(fmt.Sprintf("since %s: %s", q.Since.Local().Format(time.DateTime), reason))
}

// vmStatus is `sandbox vm status` in JSON.
type vmStatus struct {
	Plugin string `json:"plugin"`
	hypervisor.Status
	Quarantine *lifecycle.QuarantineEntry `json:"quarantine,omitempty"`
	Lease      *statedir.LeaseInfo        `json:"lease,omitempty"`
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
			if out.Lease, err = a.state.Lease(vm.Key()); err != nil {
				return err
			}
			return a.emit(out, func(w io.Writer) { printStatus(w, out) })
		},
	}
}

func printStatus(w io.Writer, s vmStatus) {
	st := s.Status
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "VM:\t%s\n", cell(st.VM))
	fmt.Fprintf(tw, "Plugin:\t%s\n", cell(s.Plugin))
	fmt.Fprintf(tw, "Power:\t%s (hypervisor says %q)\n", st.Power, st.Raw)
	fmt.Fprintf(tw, "Session lock:\t%s\n", st.Lock)
	fmt.Fprintf(tw, "Current snapshot:\t%s\n", orDash(st.CurrentSnapshot))
	if st.StateChanged.IsZero() {
		fmt.Fprintf(tw, "State changed:\t-\n")
	} else {
		fmt.Fprintf(tw, "State changed:\t%s (%s ago)\n", st.StateChanged.Format(time.RFC3339),
			time.Since(st.StateChanged).Round(time.Second))
	}
	fmt.Fprintf(tw, "Lease:\t%s\n", leaseCell(s.Lease))
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
