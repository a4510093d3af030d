package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// runFlags are `sandbox run`'s options.
type runFlags struct {
	vms         []string
	profiles    []string
	out         string
	maxStarting int
}

func (a *app) runCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run SAMPLE...",
		Short: "Analyse samples on VMs: restore, start, copy in, run the profile's command, collect, clean",
		Long: "run analyses each SAMPLE with every profile of config.toml (or those given with --profile), each on\n" +
			"whichever of the profile's VMs is free, and writes one report.json per sample under --out. Every VM\n" +
			"it used ends off, unlocked and restored, or quarantined with the reason, whatever fails.\n\n" +
			"Exit status: 0 when every task ended done (whatever the verdicts), 1 when a task failed,\n" +
			"2 on a usage error, 130 or 143 when interrupted by Ctrl-C or SIGTERM (the VMs in use are cleaned first).",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs at least one SAMPLE file", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return a.run(args, f) },
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.vms, "vm", nil, "run only on this `VM` (repeatable); each profile keeps those of its VMs given")
	fl.StringArrayVar(&f.profiles, "profile", nil, "analyse with this `PROFILE` only (repeatable; default: every profile)")
	fl.StringVar(&f.out, "out", "", "write reports under `DIR` (default: [engine] out_dir, else results/ beside config.toml)")
	fl.IntVar(&f.maxStarting, "max-starting", 0, "start at most `N` VMs at once (default: [engine] max_starting, else 2)")
	return cmd
}

// runOutput is `sandbox run --json`.
type runOutput struct {
	*engine.Summary
	OutDir string `json:"out_dir"`
}

func (a *app) run(args []string, f runFlags) error {
	if err := a.load(); err != nil {
		return err
	}
	if err := a.applyFlags(config.Flags{OutDir: f.out, MaxStarting: f.maxStarting}); err != nil {
		return err
	}
	profiles, vms, err := a.selectProfiles(f)
	if err != nil {
		return err
	}
	samples, err := openSamples(args)
	if err != nil {
		return err
	}
	m, err := a.manager()
	if err != nil {
		return err
	}
	ctx := a.context()
	resolved, err := a.resolveVMs(ctx, vms)
	if err != nil {
		return err
	}
	if err := a.checkVMsExist(ctx, resolved, profiles); err != nil {
		return err
	}
	events := engine.NewEvents()
	e := engine.New(engine.Options{Lifecycle: m, Logger: a.log.Named("engine"), MaxStarting: a.cfg.Engine.MaxStarting, Events: events})
	var chosen []config.Profile
	for _, name := range profiles {
		chosen = append(chosen, a.cfg.Profiles[name])
	}
	pool, err := engine.NewPool(ctx, e, resolved, chosen)
	if err != nil {
		return err
	}
	out := a.cfg.Engine.OutDir
	var live *liveTable
	if !a.json {
		live = newLiveTable(a.errOut, vms)
	}
	unsubscribe := events.Subscribe(live.update)
	sum, runErr := pool.RunBatch(ctx, engine.Batch{Samples: samples, Profiles: profiles, OutDir: out})
	unsubscribe()
	live.close()
	if sum == nil {
		if st := a.interruptedStatus(); st != 0 && ctx.Err() != nil {
			return fmt.Errorf("interrupted before any task ran: %w", runErr)
		}
		return runErr
	}
	if err := a.emit(runOutput{Summary: sum, OutDir: out}, func(w io.Writer) { printRun(w, sum, out) }); err != nil {
		return err
	}
	if runErr != nil {
		fmt.Fprintf(a.errOut, "sandbox: %v\n", runErr)
	}
	switch st := a.interruptedStatus(); {
	case st != 0:
		return exitStatus(st)
	case runErr != nil || sum.Failed() > 0:
		return exitStatus(1)
	}
	return nil
}

// selectProfiles picks the profiles and their VMs from config.toml and the
// flags; a name that matches nothing is a usage error that lists what
// would. A profile none of whose VMs --vm keeps is left out.
func (a *app) selectProfiles(f runFlags) (profiles, vms []string, err error) {
	names := a.cfg.ProfileNames()
	if len(names) == 0 {
		return nil, nil, fmt.Errorf("%s has no [profiles.NAME] table: declare the analysis to run and its VMs (see docs/engine.md)", a.cfg.Path)
	}
	if len(f.profiles) > 0 {
		for _, p := range f.profiles {
			if _, ok := a.cfg.Profiles[p]; !ok {
				return nil, nil, usagef("--profile %q: no such profile in %s; known: %s", p, a.cfg.Path, strings.Join(names, ", "))
			}
		}
		names = slices.Compact(slices.Clone(f.profiles))
	}
	for _, name := range names {
		kept := false
		for _, vm := range a.cfg.Profiles[name].VMs {
			if len(f.vms) > 0 && !slices.Contains(f.vms, vm) {
				continue
			}
			kept = true
			if !slices.Contains(vms, vm) {
				vms = append(vms, vm)
			}
		}
		if kept {
			profiles = append(profiles, name)
		}
	}
	for _, vm := range f.vms {
		if !slices.Contains(vms, vm) {
			var where []string
			for _, name := range names {
				where = append(where, fmt.Sprintf("%s: %s", name, strings.Join(a.cfg.Profiles[name].VMs, ", ")))
			}
			return nil, nil, usagef("--vm %q is in none of the profiles selected (%s)", vm, strings.Join(where, "; "))
		}
	}
	return profiles, vms, nil
}

// resolveVMs finds each VM's plugin and settings.
func (a *app) resolveVMs(ctx context.Context, names []string) ([]lifecycle.VM, error) {
	fl, err := a.fleet()
	if err != nil {
		return nil, err
	}
	var out []lifecycle.VM
	for _, name := range names {
		plugin, d, err := fl.Resolve(ctx, name, "")
		if err != nil {
			return nil, err
		}
		out = append(out, lifecycle.VM{Name: name, Plugin: plugin, Driver: d, Settings: a.cfg.LifecycleOf(name)})
	}
	return out, nil
}

// checkVMsExist refuses a profile that names a VM its plugin does not
// have, as a mistake of config.toml, before anything runs: the VM would
// otherwise look unreadable to every task, and be quarantined for it.
func (a *app) checkVMsExist(ctx context.Context, vms []lifecycle.VM, profiles []string) error {
	for _, vm := range vms {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := vm.Driver.Status(sctx, vm.Name)
		cancel()
		if !hypervisor.IsNotFound(err) {
			continue // it exists, or the hypervisor could not say: the task will find out
		}
		var has []string
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if list, err := vm.Driver.ListVMs(lctx); err == nil {
			for _, v := range list {
				has = append(has, v.Name)
			}
		}
		cancel()
		listed := fmt.Sprintf("it has: %s", strings.Join(has, ", "))
		if len(has) == 0 {
			listed = "it has none"
		}
		doc := configfile.Document{File: a.cfg.Path, Data: a.cfg.Data}
		for _, p := range profiles {
			if slices.Contains(a.cfg.Profiles[p].VMs, vm.Name) {
				return doc.Errorf([]string{"profiles", p, "vms"}, "VM %q is not a VM of plugin %s (%s); fix the name or "+
					"remove it from the profile", vm.Name, vm.Plugin, listed)
			}
		}
		return fmt.Errorf("VM %q is not a VM of plugin %s (%s)", vm.Name, vm.Plugin, listed)
	}
	return nil
}

// openSamples hashes each sample once; the same content given twice is
// analysed once.
func openSamples(paths []string) ([]engine.Sample, error) {
	var out []engine.Sample
	seen := map[string]bool{}
	for _, p := range paths {
		s, err := engine.OpenSample(p)
		if err != nil {
			return nil, err
		}
		if !seen[s.SHA256] {
			seen[s.SHA256] = true
			out = append(out, s)
		}
	}
	return out, nil
}

func printRun(w io.Writer, sum *engine.Summary, out string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SAMPLE\tPROFILE\tVM\tVERDICT\tSTATE\tTOOK")
	tasks, failed := 0, 0
	var problems []string
	for _, rep := range sum.Reports {
		for _, r := range rep.Results {
			tasks++
			state := string(r.State)
			if r.State != engine.StepDone {
				failed++
				state += " at " + string(r.FailedStep)
				problems = append(problems, fmt.Sprintf("%s with %s%s: %s at %s: %s",
					rep.Sample.Name, r.Profile, onVM(r.VM), r.State, r.FailedStep, firstLine(r.Error)))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", rep.Sample.Name, r.Profile, orDash(r.VM), orDash(string(r.Verdict)), state, took(r))
		}
	}
	_ = tw.Flush()
	for _, p := range problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
	for _, rep := range sum.Reports {
		for _, r := range rep.Results {
			if r.Prepare == nil || !r.Prepare.Reconciled {
				continue
			}
			by := "an earlier run"
			if r.Prepare.LeftBy != nil {
				by = r.Prepare.LeftBy.String() + ", which died holding it"
			}
			found := ""
			if st := r.Prepare.Initial; st != nil {
				found = fmt.Sprintf(" %s/%s on %q", st.Power, st.Lock, st.CurrentSnapshot)
			}
			fmt.Fprintf(w, "VM %s was left%s by %s; it was cleaned before %s ran on it.\n", r.VM, found, by, rep.Sample.Name)
		}
	}
	for _, vm := range slices.Sorted(maps.Keys(sum.Unusable)) {
		fmt.Fprintf(w, "VM %s was left out of the run: %s\n", vm, sum.Unusable[vm])
		if strings.Contains(sum.Unusable[vm], "quarantined") {
			fmt.Fprintf(w, "  (run `sandbox vm cleanup %s` once the cause is fixed)\n", vm)
		}
	}
	verdicts := map[engine.Verdict]int{}
	for _, rep := range sum.Reports {
		verdicts[rep.Verdict]++
	}
	fmt.Fprintf(w, "%d sample(s): %d clean, %d malicious, %d without an answer; %d task(s), %d failed, in %s.\n",
		len(sum.Reports), verdicts[engine.VerdictClean], verdicts[engine.VerdictMalicious], verdicts[engine.VerdictError],
		tasks, failed, sum.Duration.Round(100*time.Millisecond))
	if sum.Cancelled {
		fmt.Fprintln(w, "The run was interrupted; the VMs it was using were cleaned.")
	}
	fmt.Fprintf(w, "Reports: %s\n", filepath.Join(out, "<sha256>", engine.ReportFile))
}

func onVM(vm string) string {
	if vm == "" {
		return ""
	}
	return " on " + vm
}

// took is how long a task held its VM, from preparing to its end.
func took(r *engine.Result) string {
	var from, to time.Time
	for _, tr := range r.Transitions {
		if tr.Step == engine.StepPreparing {
			from = tr.At
		}
		if tr.Step.Final() {
			to = tr.At
		}
	}
	if from.IsZero() || to.IsZero() {
		return "-"
	}
	return to.Sub(from).Round(100 * time.Millisecond).String()
}
