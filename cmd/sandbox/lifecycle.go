package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// manager returns the lifecycle manager, sharing quarantine and leases with
// every other sandbox process through the state directory.
func (a *app) manager() (*lifecycle.Manager, error) {
	if err := a.load(); err != nil {
		return nil, err
	}
	a.once.Lock()
	defer a.once.Unlock()
	if a.lifecycle == nil {
		dir, err := statedir.Open(a.cfg.StateDir)
		if err != nil {
			return nil, err
		}
		a.state = dir
		a.lifecycle = lifecycle.New(lifecycle.Options{Logger: a.log, Quarantine: dir.Quarantine(), Leases: dir.Leases()})
	}
	return a.lifecycle, nil
}

// vmTarget prepares a command on one VM: the manager, a context that ends
// on Ctrl-C, and the VM resolved to its plugin and settings.
func (a *app) vmTarget(name, plugin string) (context.Context, *lifecycle.Manager, lifecycle.VM, error) {
	m, err := a.manager()
	if err != nil {
		return nil, nil, lifecycle.VM{}, err
	}
	ctx := a.context()
	vm, err := a.lifecycleVM(ctx, name, plugin)
	return ctx, m, vm, err
}

// lifecycleVM resolves a VM name to what the manager needs.
func (a *app) lifecycleVM(ctx context.Context, name, plugin string) (lifecycle.VM, error) {
	f, err := a.fleet()
	if err != nil {
		return lifecycle.VM{}, err
	}
	if len(a.cfg.Plugins) == 0 {
		return lifecycle.VM{}, fmt.Errorf("%s declares no plugin, so no VM can be found: add a [plugins.NAME] table "+
			"(see docs/configuration.md)", a.cfg.Path)
	}
	if plugin != "" {
		if _, err := a.host.Plugin(plugin); err != nil {
			return lifecycle.VM{}, usagef("--plugin: %v", err)
		}
	}
	pname, d, err := f.Resolve(ctx, name, plugin)
	if err != nil {
		return lifecycle.VM{}, err
	}
	return lifecycle.VM{Name: name, Plugin: pname, Driver: d, Settings: a.cfg.LifecycleOf(name)}, nil
}

// lifecycleCommand builds one `sandbox vm VERB VM` command around a manager
// operation, with live progress on a terminal and the report at the end.
// validate, when not nil, checks the command's flags before any plugin is
// launched, so that a bad flag is a usage error (exit 2) with or without
// --json.
func (a *app) lifecycleCommand(plugin *string, use, short string, validate func() error,
	run func(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM, opts []lifecycle.Option) (*lifecycle.OpReport, error),
) *cobra.Command {
	return &cobra.Command{
		Use:   use + " VM",
		Short: short,
		Args:  exactArgs("VM"),
		PreRunE: func(*cobra.Command, []string) error {
			if validate == nil {
				return nil
			}
			return validate()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, m, vm, err := a.vmTarget(args[0], *plugin)
			if err != nil {
				return err
			}
			var live *liveLine
			if !a.json {
				live = newLiveLine(a.errOut)
			}
			report, opErr := run(ctx, m, vm, []lifecycle.Option{lifecycle.WithProgress(live.update)})
			live.close()
			if report != nil {
				if err := a.emit(report, func(w io.Writer) { printReport(w, report) }); err != nil {
					return err
				}
			}
			if opErr != nil && a.json {
				return errReported
			}
			return opErr
		},
	}
}

func (a *app) lifecycleCommands(plugin *string) []*cobra.Command {
	var method string
	stop := a.lifecycleCommand(plugin, "stop", "Stop a VM through its stop ladder (or one --method) and wait for its session to be released",
		func() error {
			if method != "" && !hypervisor.StopMethod(method).Valid() {
				return usagef("--method %q: want acpi, poweroff or emergency", method)
			}
			return nil
		},
		func(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM, opts []lifecycle.Option) (*lifecycle.OpReport, error) {
			if method != "" {
				opts = append(opts, lifecycle.WithMethod(hypervisor.StopMethod(method)))
			}
			return m.Stop(ctx, vm, opts...)
		})
	stop.Flags().StringVar(&method, "method", "", "use only this stop `METHOD` (acpi, poweroff, emergency) instead of the VM's ladder")

	var restoreSnapshot string
	restore := a.lifecycleCommand(plugin, "restore", "Stop a VM cleanly, then restore its snapshot and verify it", nil,
		func(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM, opts []lifecycle.Option) (*lifecycle.OpReport, error) {
			if restoreSnapshot != "" {
				opts = append(opts, lifecycle.WithSnapshot(restoreSnapshot))
			}
			return m.Restore(ctx, vm, opts...)
		})
	restore.Flags().StringVar(&restoreSnapshot, "snapshot", "", "restore this `SNAPSHOT` (default: the VM's configured one, else its current one)")

	var cleanupSnapshot string
	var noRestore bool
	cleanup := a.lifecycleCommand(plugin, "cleanup", "Leave a VM off, unlocked and restored; lifts its quarantine on success",
		func() error {
			if noRestore && cleanupSnapshot != "" {
				return usagef("--snapshot and --no-restore contradict each other")
			}
			return nil
		},
		func(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM, opts []lifecycle.Option) (*lifecycle.OpReport, error) {
			if cleanupSnapshot != "" {
				opts = append(opts, lifecycle.WithSnapshot(cleanupSnapshot))
			}
			if noRestore {
				opts = append(opts, lifecycle.WithRestore(false))
			}
			return m.Cleanup(ctx, vm, opts...)
		})
	cleanup.Flags().StringVar(&cleanupSnapshot, "snapshot", "", "restore this `SNAPSHOT` (default: the VM's configured one, else its current one)")
	cleanup.Flags().BoolVar(&noRestore, "no-restore", false, "leave the VM off and unlocked without restoring it")

	return []*cobra.Command{
		a.lifecycleCommand(plugin, "start", "Start a VM headless, retrying while its session is still held", nil,
			func(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM, opts []lifecycle.Option) (*lifecycle.OpReport, error) {
				return m.Start(ctx, vm, opts...)
			}),
		stop,
		a.lifecycleCommand(plugin, "unlock", "Free the session lock of a stopped VM: wait for its release, then unlock actively", nil,
			func(ctx context.Context, m *lifecycle.Manager, vm lifecycle.VM, opts []lifecycle.Option) (*lifecycle.OpReport, error) {
				return m.Unlock(ctx, vm, opts...)
			}),
		restore,
		cleanup,
	}
}

func printReport(w io.Writer, r *lifecycle.OpReport) {
	outcome := "done"
	if r.Error != "" {
		outcome = "FAILED"
	}
	fmt.Fprintf(w, "%s %s (plugin %s): %s in %s, path %s, %d status calls\n",
		r.Operation, cell(r.VM), cell(r.Plugin), outcome, r.Duration.Round(time.Millisecond), r.Path, r.StatusCalls)
	if len(r.Steps) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "STEP\tOUTCOME\tTOOK\tDEADLINE\tSTATE\tDETAIL")
		for _, s := range r.Steps {
			deadline := "-"
			if s.Deadline > 0 {
				deadline = s.Deadline.String()
			}
			outcome := s.Outcome
			if s.Attempts > 1 {
				outcome += fmt.Sprintf(" (%d tries)", s.Attempts)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, outcome, s.Duration.Round(time.Millisecond), deadline,
				orDash(s.State), firstLine(s.Detail))
		}
		_ = tw.Flush()
	}
	if r.Final != nil {
		fmt.Fprintf(w, "Final state: %s, session %s, snapshot %s\n", r.Final.Power, r.Final.Lock, orDash(r.Final.CurrentSnapshot))
	}
	for _, f := range r.Fallbacks {
		fmt.Fprintf(w, "Fallback: %s\n", f)
	}
	if r.Reconciled {
		fmt.Fprintf(w, "The VM was left behind by an earlier run (%s) and has been cleaned.\n", r.Steps[0].Outcome)
	}
	if r.LeftBy != nil {
		fmt.Fprintf(w, "Its lease was held by %s, which died holding it.\n", r.LeftBy)
	}
	if r.Quarantined {
		fmt.Fprintf(w, "The VM is now QUARANTINED: it will not be used for tasks until `sandbox vm cleanup %s` succeeds.\n", r.VM)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
