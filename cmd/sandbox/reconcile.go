package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// reconcileWorkers bounds how many VMs `vm reconcile --all` cleans at once.
const reconcileWorkers = 4

func (a *app) vmReconcileCommand(plugin *string) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "reconcile [--all] [VM]",
		Short: "Clean VMs an earlier run left running, paused, saved or locked (a crash, a kill -9)",
		Long: "reconcile checks each VM nobody is using (no live lease) for what an earlier sandbox process left\n" +
			"behind when it died: a VM running, paused, saved, aborted, locked or off its snapshot, or one whose\n" +
			"lease holder died holding it. Such a VM is cleaned like `sandbox vm cleanup` does, and the report says\n" +
			"so; a clean VM is left alone, and so is a VM in use or quarantined. A VM that cannot be cleaned is\n" +
			"quarantined. Exit status 1 if a VM is left unusable (failed or quarantined).",
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case all && len(args) > 0:
				return usagef("%s takes a VM or --all, not both", cmd.CommandPath())
			case !all && len(args) != 1:
				return usagef("%s takes one VM, or --all for every VM of every plugin", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager()
			if err != nil {
				return err
			}
			ctx := a.context()
			var vms []lifecycle.VM
			var listErrs []error
			if all {
				vms, listErrs = a.everyVM(ctx, *plugin)
			} else {
				vm, err := a.lifecycleVM(ctx, args[0], *plugin)
				if err != nil {
					return err
				}
				vms = []lifecycle.VM{vm}
			}
			results := reconcileAll(ctx, m, vms)
			if !all && !a.json {
				r := results[0]
				if r.Report != nil && len(r.Report.Steps) > 0 {
					printReport(a.out, r.Report)
				} else {
					fmt.Fprintf(a.out, "reconcile %s (plugin %s): %s: %s\n", cell(r.VM), cell(r.Plugin), r.Outcome, r.Detail)
				}
			} else if err := a.emit(map[string]any{"vms": results, "errors": errorTexts(listErrs)}, func(w io.Writer) {
				printReconciled(w, results)
			}); err != nil {
				return err
			}
			for _, e := range listErrs {
				fmt.Fprintf(a.errOut, "sandbox: %v\n", e)
			}
			if a.interruptedStatus() != 0 {
				return context.Canceled
			}
			for _, r := range results {
				if r.Unusable {
					return errReported
				}
			}
			if len(listErrs) > 0 {
				return errReported
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "reconcile every VM of every plugin")
	return cmd
}

// everyVM lists every VM of every plugin (or of plugin) for --all.
func (a *app) everyVM(ctx context.Context, plugin string) ([]lifecycle.VM, []error) {
	f, err := a.fleet()
	if err != nil {
		return nil, []error{err}
	}
	if plugin != "" {
		if _, err := a.host.Plugin(plugin); err != nil {
			return nil, []error{usagef("--plugin: %v", err)}
		}
	}
	entries, errs := f.List(ctx)
	var vms []lifecycle.VM
	for _, e := range entries {
		if plugin != "" && e.Plugin != plugin {
			continue
		}
		p, err := a.host.Plugin(e.Plugin)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		vms = append(vms, lifecycle.VM{Name: e.Name, Plugin: e.Plugin, Driver: p, Settings: a.cfg.LifecycleOf(e.Name)})
	}
	return vms, errs
}

// reconciled is one VM's reconciliation in `sandbox vm reconcile`.
type reconciled struct {
	VM     string `json:"vm"`
	Plugin string `json:"plugin"`
	// Outcome is "clean", "cleaned", "in use", "quarantined" or "failed".
	Outcome string `json:"outcome"`
	// Detail says what was found, who holds the VM or what failed.
	Detail   string              `json:"detail,omitempty"`
	Unusable bool                `json:"unusable,omitempty"`
	Report   *lifecycle.OpReport `json:"report,omitempty"`
}

// reconcileAll reconciles vms, a few at a time, in their order.
func reconcileAll(ctx context.Context, m *lifecycle.Manager, vms []lifecycle.VM) []reconciled {
	out := make([]reconciled, len(vms))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(reconcileWorkers, len(vms)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				out[i] = reconcileOne(ctx, m, vms[i])
			}
		}()
	}
	for i := range vms {
		work <- i
	}
	close(work)
	wg.Wait()
	return out
}

func reconcileOne(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM) reconciled {
	rep, err := m.Reconcile(ctx, vm)
	r := reconciled{VM: vm.Name, Plugin: vm.Plugin, Report: rep}
	var held *lifecycle.LeaseHeldError
	var quarantined *lifecycle.QuarantineError
	switch {
	case errors.As(err, &held):
		r.Outcome, r.Detail = "in use", "left alone: "+held.Error()
		r.Report = nil
	case errors.As(err, &quarantined):
		r.Outcome, r.Detail, r.Unusable = "quarantined", err.Error(), true
		r.Report = nil
	case err != nil:
		r.Outcome, r.Detail, r.Unusable = "failed", err.Error(), true
		if rep != nil && rep.Quarantined {
			r.Detail += " (now quarantined)"
		}
	case rep.Reconciled:
		r.Outcome = "cleaned"
		if len(rep.Steps) > 0 {
			r.Detail = rep.Steps[0].Outcome + ": " + rep.Steps[0].Detail
		}
	default:
		r.Outcome = "clean"
	}
	return r
}

func printReconciled(w io.Writer, results []reconciled) {
	if len(results) == 0 {
		fmt.Fprintln(w, "No VMs to reconcile.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tVM\tOUTCOME\tTOOK\tDETAIL")
	for _, r := range results {
		took := "-"
		if r.Report != nil {
			took = r.Report.Duration.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cell(r.Plugin), cell(r.VM), r.Outcome, took, orDash(cell(firstLine(r.Detail))))
	}
	_ = tw.Flush()
}

func errorTexts(errs []error) []string {
	out := make([]string, len(errs))
	for i, e := range errs {
		out[i] = e.Error()
	}
	return out
}
