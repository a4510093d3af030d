package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// conformanceFlags are the command line of `sandbox conformance`, mapped
// one to one onto a conformance.Target.
type conformanceFlags struct {
	plugin, vm, snapshot, other       string
	peerVM, lockVM, deadlineVM, oddVM string
	run                               string
	list                              bool
	timing                            conformance.Timing
	guestDir, guestCat, guestSleep    string
	model                             modelFlags
}

// conformanceReport is `sandbox conformance` in JSON.
type conformanceReport struct {
	Plugin  string               `json:"plugin"`
	VM      string               `json:"vm"`
	Driver  hypervisor.Info      `json:"driver"`
	Results []conformance.Result `json:"results"`
	Summary map[string]int       `json:"summary"`
	// Unchecked are the rules left unchecked for want of a fixture.
	Unchecked []conformance.Unchecked `json:"unchecked,omitempty"`
	Restore   string                  `json:"restore,omitempty"`
	// Model is what the model's exploration did and found (--explore).
	Model   *conformance.ModelReport `json:"model,omitempty"`
	Elapsed time.Duration            `json:"elapsed_ns"`
}

func (a *app) conformanceCommand() *cobra.Command {
	var o conformanceFlags
	cmd := &cobra.Command{
		Use:   "conformance --plugin NAME [--vm VM] [--snapshot S] [--run REGEX]",
		Short: "Check a plugin against the hypervisor contract and print where it breaks it",
		Long: "conformance launches the plugin as every command does and runs the conformance suite\n" +
			"(docs/conformance.md) against it: each check cites the clause of docs/contract.md it enforces.\n" +
			"It starts, stops and restores the VM it is given (by default the first [vms.NAME] of the plugin),\n" +
			"and puts every VM it touched back in the power state and snapshot it found it in.\n" +
			"Checks that need a capability the plugin does not declare, or a VM not given, are skipped with the reason.\n" +
			"Exit status 1 if any check fails.",
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.list {
				return a.listChecks()
			}
			return a.runConformance(o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.plugin, "plugin", "", "the `PLUGIN` to check, as named in the configuration (required)")
	f.StringVar(&o.vm, "vm", "", "the disposable `VM` the checks drive (default: the first [vms.NAME] of the plugin not given another role)")
	f.StringVar(&o.snapshot, "snapshot", "", "the `SNAPSHOT` of --vm to restore to (default: the one it is at)")
	f.StringVar(&o.other, "other-snapshot", "", "a second `SNAPSHOT` of --vm, for telling a restore of it from one of the current snapshot")
	f.StringVar(&o.peerVM, "peer-vm", "", "a second disposable `VM`, for operations on two VMs at once")
	f.StringVar(&o.lockVM, "lock-vm", "", "a `VM` whose session lock outlives its process until Unlock")
	f.StringVar(&o.deadlineVM, "deadline-vm", "", "a `VM` whose restore takes longer than --margin")
	f.StringVar(&o.oddVM, "unmapped-vm", "", "a `VM` in a state the driver has no word for")
	f.StringVar(&o.run, "run", "", "run only the checks whose name matches `REGEX`, e.g. 'Restore/|Stop/Ladder'")
	f.BoolVar(&o.list, "list", false, "list the checks and the clauses they enforce, without running them")
	f.DurationVar(&o.timing.Settle, "settle", 0, "bound of every wait for a state (default 1m)")
	f.DurationVar(&o.timing.ACPI, "acpi", 0, "how long a guest gets to obey the power button (default 30s)")
	f.DurationVar(&o.timing.Deadline, "deadline", 0, "the short deadline of the deadline checks (default 50ms)")
	f.DurationVar(&o.timing.Margin, "margin", 0, "how late past a deadline an answer may come (default 1s)")
	f.StringVar(&o.guestDir, "guest-dir", "", "a writable `DIR` in the guest (default /tmp)")
	f.StringVar(&o.guestCat, "guest-cat", "", "guest `COMMAND` printing the file given last (default \"cat\")")
	f.StringVar(&o.guestSleep, "guest-sleep", "", "guest `COMMAND` running for a minute (default \"sleep 60\")")
	o.model.register(f)
	return cmd
}

func (a *app) runConformance(o conformanceFlags) error {
	if o.plugin == "" {
		return usagef("conformance needs --plugin NAME (or --list)")
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--settle", o.timing.Settle}, {"--acpi", o.timing.ACPI}, {"--deadline", o.timing.Deadline}, {"--margin", o.timing.Margin}} {
		if d.v < 0 {
			return usagef("%s %s: must not be negative (0 keeps the default)", d.flag, d.v)
		}
	}
	if err := o.model.check(); err != nil {
		return err
	}
	var match func(string) bool
	if o.run != "" {
		re, err := regexp.Compile(o.run)
		if err != nil {
			return usagef("--run %q: %v", o.run, err)
		}
		match = re.MatchString
	}
	if err := a.load(); err != nil {
		return err
	}
	plugin, err := a.host.Plugin(o.plugin)
	if err != nil {
		return usagef("%v", err)
	}
	if o.vm == "" {
		vm, err := a.pickConformanceVM(plugin, o)
		if err != nil {
			return err
		}
		o.vm = vm
	}
	target := conformance.Target{
		Connect:       conformance.Connected(plugin),
		VM:            o.vm,
		Snapshot:      o.snapshot,
		OtherSnapshot: o.other,
		PeerVM:        o.peerVM,
		LockVM:        o.lockVM,
		DeadlineVM:    o.deadlineVM,
		UnmappedVM:    o.oddVM,
		Guest: conformance.Guest{
			Dir:   o.guestDir,
			Cat:   strings.Fields(o.guestCat),
			Sleep: strings.Fields(o.guestSleep),
		},
		Timing: o.timing,
		Model:  o.model.exploration(),
	}
	release, err := a.leaseVMs(o.plugin, o.vm, o.peerVM, o.lockVM, o.deadlineVM, o.oddVM)
	if err != nil {
		return err
	}
	defer release()
	if o.model.replay != "" {
		return a.replayScript(o, target)
	}
	progress := a.progress()
	begun := time.Now()
	rep, err := conformance.Collect(a.context(), target, conformance.Options{Match: match, Progress: progress})
	if err != nil {
		return err
	}
	out := conformanceReport{
		Plugin: o.plugin, VM: o.vm, Driver: rep.Driver, Results: rep.Results, Restore: rep.Restore, Unchecked: rep.Unchecked,
		Model: rep.Model, Elapsed: time.Since(begun),
		Summary: map[string]int{
			string(conformance.Pass): rep.Count(conformance.Pass),
			string(conformance.Fail): rep.Count(conformance.Fail),
			string(conformance.Skip): rep.Count(conformance.Skip),
		},
	}
	if err := a.emit(out, func(w io.Writer) { printConformance(w, out) }); err != nil {
		return err
	}
	if a.interruptedStatus() != 0 {
		return context.Canceled // the run was cut short: say so in the exit status
	}
	if rep.Failed() {
		return errReported
	}
	return nil
}

// pickConformanceVM chooses the VM the suite drives when --vm is not
// given: the first of the plugin's configured VMs not given another role
// whose state the driver can name. A VM it cannot read, or in a state the
// driver has no word for, would only make every check wait for a state it
// never reaches; it is passed over, and the operator told why.
func (a *app) pickConformanceVM(plugin *host.Plugin, o conformanceFlags) (string, error) {
	taken := []string{o.peerVM, o.lockVM, o.deadlineVM, o.oddVM}
	var passed, roled []string
	for _, vm := range a.vmsOf(o.plugin) {
		if slices.Contains(taken, vm) {
			roled = append(roled, vm)
			continue
		}
		ctx, cancel := context.WithTimeout(a.context(), 30*time.Second)
		st, err := plugin.Status(ctx, vm)
		cancel()
		switch {
		case a.context().Err() != nil:
			return "", a.context().Err()
		case err != nil:
			passed = append(passed, fmt.Sprintf("%s (%v)", vm, err))
			continue
		case st.Power == hypervisor.PowerUnknown:
			passed = append(passed, fmt.Sprintf("%s (in state %q, which the driver has no word for)", vm, st.Raw))
			continue
		}
		for _, p := range passed {
			fmt.Fprintf(a.errOut, "sandbox: conformance: passing over VM %s; using %s\n", p, vm)
		}
		return vm, nil
	}
	if len(passed) > 0 {
		return "", usagef("conformance needs --vm VM: no configured VM of plugin %q can be used: %s", o.plugin, strings.Join(passed, "; "))
	}
	if len(roled) > 0 {
		return "", usagef("conformance needs --vm VM: every [vms.NAME] table of %s that belongs to plugin %q (%s) is given another role; "+
			"add one more VM, or name one with --vm", a.cfg.Path, o.plugin, strings.Join(roled, ", "))
	}
	return "", usagef("conformance needs --vm VM: no [vms.NAME] table of %s belongs to plugin %q; "+
		"name a VM of the plugin with --vm, or add a [vms.NAME] table with plugin = %q", a.cfg.Path, o.plugin, o.plugin)
}

// vmsOf lists, sorted, the configured VMs that belong to plugin: those
// naming it, and with a single plugin configured those naming none.
func (a *app) vmsOf(plugin string) []string {
	var out []string
	for name, vm := range a.cfg.VMs {
		if vm.Plugin == plugin || (vm.Plugin == "" && len(a.cfg.Plugins) == 1) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// progress reports each check as it ends on a terminal, since a run
// against real VMs takes minutes; nil (no reports) otherwise.
func (a *app) progress() func(conformance.Result) {
	f, ok := a.errOut.(*os.File)
	if a.json || !ok {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	var mu sync.Mutex // checks on different VMs end at the same time
	return func(r conformance.Result) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(f, "conformance: %-4s %s (%s)\n", r.Outcome, r.Check, r.Duration.Round(time.Millisecond))
	}
}

func printConformance(w io.Writer, r conformanceReport) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRULES\tRESULT\tTIME\tMESSAGE")
	for _, res := range r.Results {
		msg, _, _ := strings.Cut(res.Message, "\n")
		rules := strings.Join(res.Rules, " ")
		if rules == "" {
			rules = res.Clause
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", res.Check, rules, res.Outcome,
			res.Duration.Round(time.Millisecond), orDash(msg))
	}
	_ = tw.Flush()
	for _, res := range r.Results {
		if res.Outcome != conformance.Fail || !strings.Contains(res.Message, "\n") {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s):\n  %s\n", res.Check, res.Clause, strings.ReplaceAll(res.Message, "\n", "\n  "))
	}
	fmt.Fprintf(w, "\n%s %s (contract %d) on VM %s: %d passed, %d failed, %d skipped in %s\n",
		orDash(r.Driver.Name), r.Driver.Version, r.Driver.ContractVersion, r.VM,
		r.Summary[string(conformance.Pass)], r.Summary[string(conformance.Fail)], r.Summary[string(conformance.Skip)],
		r.Elapsed.Round(100*time.Millisecond))
	if len(r.Unchecked) > 0 {
		fmt.Fprintf(w, "\n%d rules of the contract stayed unchecked for want of a fixture:\n", len(r.Unchecked))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, u := range r.Unchecked {
			fmt.Fprintf(tw, "  %s\t%s\tgive %s\n", u.Rule, strings.Join(u.Checks, ", "), strings.Join(u.How, "; "))
		}
		_ = tw.Flush()
	}
	printModel(w, r.Model)
	if r.Restore != "" {
		fmt.Fprintf(w, "Could not put the VMs back as they were: %s\n", r.Restore)
	}
}

// listChecks prints the suite's checks; it needs no configuration.
func (a *app) listChecks() error {
	checks := conformance.Checks()
	return a.emit(map[string]any{"checks": checks}, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CHECK\tRULES\tTHE DRIVER MUST")
		for _, c := range checks {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.Clause, c.Summary)
		}
		_ = tw.Flush()
	})
}

// leaseVMs takes the state directory's lease on every VM the suite will
// drive, so that it never works on a VM another sandbox process is using
// (an engine's task, an operator's cleanup). It waits a few seconds for a
// busy VM, then says which one is in use.
func (a *app) leaseVMs(plugin string, vms ...string) (func(), error) {
	if _, err := a.manager(); err != nil {
		return nil, err
	}
	var releases []func()
	releaseAll := func() {
		for _, r := range releases {
			r()
		}
	}
	seen := map[string]bool{}
	for _, vm := range vms {
		if vm == "" || seen[vm] {
			continue
		}
		seen[vm] = true
		ctx, cancel := context.WithTimeout(a.context(), 5*time.Second)
		r, err := a.state.Leases().Acquire(ctx, plugin+"/"+vm)
		cancel()
		if err != nil {
			releaseAll()
			return nil, fmt.Errorf("VM %q is in use by another sandbox operation (lease in %s): wait for it to finish or pick another VM: %w",
				vm, a.state.Path(), err)
		}
		releases = append(releases, r)
	}
	return releaseAll, nil
}
