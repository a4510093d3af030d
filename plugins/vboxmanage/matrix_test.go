//go:build unix

package vboxmanage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The fault matrix against the simulated VirtualBox: every fault the
// simulator can inject into a world that is in use, a plugin killed with
// SIGKILL, and the run cancelled, each put at the start of every step of
// an analysis task run by the engine through the plugin binary. In every
// cell the task ends with its report naming the step that failed, and the
// VM ends powered off, unlocked and on its clean snapshot, or quarantined
// with a reason; no plugin and no VBoxManage outlives the host.

var vboxMatrixSteps = []engine.Step{
	engine.StepPreparing, engine.StepRestoring, engine.StepStarting, engine.StepWaitingGuest,
	engine.StepCopying, engine.StepAnalyzing, engine.StepCollecting, engine.StepCleaning,
}

// vboxMatrixFaults change the simulated world from the moment they are
// injected. The version probes (hang_version, empty_version) are left out:
// the driver probes once, before any task.
var vboxMatrixFaults = map[string]func(w *vboxsim.World){
	"acpi_ignored":       func(w *vboxsim.World) { w.Config.Faults.ACPIIgnored = true },
	"hang_poweroff":      func(w *vboxsim.World) { w.Config.Faults.HangPowerOff = true },
	"hang_starting":      func(w *vboxsim.World) { w.Config.Faults.HangStarting = true },
	"exit_before_kill":   func(w *vboxsim.World) { w.Config.Faults.ExitBeforeKill = true },
	"access_denied":      func(w *vboxsim.World) { w.Config.Faults.AccessDenied = 2 },
	"garbage":            func(w *vboxsim.World) { w.Config.Faults.Garbage = 1 },
	"service_down":       func(w *vboxsim.World) { w.Config.Faults.ServiceDown = 2 },
	"service_down (all)": func(w *vboxsim.World) { w.Config.Faults.ServiceDown = -1 },
	"start_exit1":        func(w *vboxsim.World) { w.Config.Faults.StartExit1 = true },
	"start_fail_exit0":   func(w *vboxsim.World) { w.Config.Faults.StartFailExit0 = true },
	"warnings":           func(w *vboxsim.World) { w.Config.Faults.Warnings = true },
	"hide_session_name":  func(w *vboxsim.World) { w.Config.Faults.HideSessionName = true },
	"lingering session": func(w *vboxsim.World) {
		d := vboxsim.Duration(1500 * time.Millisecond)
		w.VMs[0].Unlock = &d
	},
	"session never released": func(w *vboxsim.World) {
		d := vboxsim.Duration(-1)
		w.VMs[0].Unlock = &d
	},
}

func TestFaultMatrixOnTheSimulator(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault matrix runs a task per cell; -short skips it")
	}
	// Parallel with the package's other tests: run alone, the matrix held
	// back every parallel test until its last cell, and the long ones
	// that wait rather than compute (the conformance suite, the engine's
	// run) began only then, so the package took their time on top of it.
	t.Parallel()
	var mu sync.Mutex
	outcomes := map[string]string{}
	columns := []string{"plugin SIGKILLed", "run cancelled"}
	for f := range vboxMatrixFaults {
		columns = append(columns, f)
	}
	sort.Strings(columns)
	t.Run("cells", func(t *testing.T) {
		for _, fault := range columns {
			for _, step := range vboxMatrixSteps {
				t.Run(fault+"@"+string(step), func(t *testing.T) {
					t.Parallel()
					mark, problem := vboxCell(t, fault, step)
					mu.Lock()
					outcomes[fault+"@"+string(step)] = mark
					mu.Unlock()
					if problem != "" {
						t.Error(problem)
					}
				})
			}
		}
	})
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-24s", "fault \\ step")
	for _, s := range vboxMatrixSteps {
		fmt.Fprintf(&b, " %-13s", s)
	}
	passed := 0
	for _, f := range columns {
		fmt.Fprintf(&b, "\n%-24s", f)
		for _, s := range vboxMatrixSteps {
			mark := outcomes[f+"@"+string(s)]
			if mark != "FAIL" && mark != "" {
				passed++
			}
			fmt.Fprintf(&b, " %-13s", mark)
		}
	}
	total := len(columns) * len(vboxMatrixSteps)
	fmt.Fprintf(&b, "\nfault matrix on the simulator: %d of %d cells passed", passed, total)
	t.Log(b.String())
	assert.Equal(t, total, passed)
}

// vboxCell runs one task on a fresh simulated VirtualBox through the plugin
// binary, with the fault put at the start of step. It returns the cell's
// mark and what went wrong, if anything.
func vboxCell(t *testing.T, fault string, step engine.Step) (mark, problem string) {
	r := newPluginRig(t, profiles[2], withVMs(engineVMs(1)...), withTiming(func(tm *vboxsim.Timing) {
		tm.GuestReady = vboxsim.Duration(100 * time.Millisecond)
	}))
	const name = "scan-1"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var pids []int
	var once sync.Once
	quarantine := lifecycle.NewMemoryQuarantine()
	events := engine.NewEvents()
	events.Subscribe(func(ev engine.Event) {
		if ev.Step != step {
			return
		}
		once.Do(func() {
			switch fault {
			case "plugin SIGKILLed":
				if pid := r.plugin.Pid(); pid > 0 {
					pids = append(pids, pid)
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			case "run cancelled":
				cancel()
			default:
				r.sim.Update(t, vboxMatrixFaults[fault])
			}
		})
	})
	e := engine.New(engine.Options{Lifecycle: lifecycle.New(lifecycle.Options{Quarantine: quarantine}), Events: events})
	vms, prof := scanVMs(r, 1)
	s := vms[0].Settings
	s.ACPITimeout, s.PowerOffTimeout, s.EmergencyTimeout = time.Second, 2*time.Second, 3*time.Second
	s.ReleaseTimeout, s.UnlockTimeout = 2*time.Second, 3*time.Second
	s.RestoreTimeout, s.StartTimeout, s.StatusTimeout, s.CleanupTimeout = 5*time.Second, 5*time.Second, 5*time.Second, 30*time.Second
	vms[0].Settings = s
	prof.ReadyTimeout, prof.CopyTimeout, prof.Timeout = 5*time.Second, 5*time.Second, 10*time.Second
	out := t.TempDir()
	sum := runBatch(ctx, t, e, vms, prof, writeSamples(t, 1), out)
	res := sum.Reports[0].Results[0]
	switch {
	case !res.State.Final():
		return "FAIL", "the task did not end: " + string(res.State)
	case res.State != engine.StepDone && res.FailedStep == "":
		return "FAIL", "the task " + string(res.State) + " without naming the step"
	}
	if _, err := os.Stat(filepath.Join(out, sum.Reports[0].Sample.SHA256, engine.ReportFile)); err != nil {
		return "FAIL", "no report: " + err.Error()
	}

	if pid := r.plugin.Pid(); pid > 0 {
		pids = append(pids, pid)
	}
	r.plugin.Kill()
	for _, pid := range pids {
		if !plugintest.GoneWithin(pid, 30*time.Second) {
			return "FAIL", fmt.Sprintf("plugin process %d outlived its host", pid)
		}
	}
	if n := liveSimulators(t, r); n > 0 {
		return "FAIL", fmt.Sprintf("%d VBoxManage processes outlived the plugin", n)
	}
	entry, quarantined, err := quarantine.Get(context.Background(), "vbox/"+name)
	require.NoError(t, err)
	vm := settledVM(t, r, name)
	clean := vm.State == "poweroff" || vm.State == "saved" || vm.State == "aborted"
	clean = clean && vm.Session.State == vboxsim.Unlocked && snapshotName(vm) == "clean"
	switch {
	case quarantined && entry.Reason == "":
		return "FAIL", "quarantined without a reason"
	case quarantined:
		return "ok (quar.)", ""
	case clean:
		return "ok", ""
	}
	return "FAIL", fmt.Sprintf("the VM is %s, session %s, on %q, and not quarantined (task %s at %s: %s)",
		vm.State, vm.Session.State, snapshotName(vm), res.State, res.FailedStep, res.Error)
}

// settledVM reads the VM from the simulated world once any transition
// under way (a session releasing) has settled.
func settledVM(t *testing.T, r *rig, name string) vboxsim.VM {
	deadline := time.Now().Add(5 * time.Second)
	for {
		vm := r.sim.VM(t, name)
		if vm.Session.State == vboxsim.Unlocked || time.Now().After(deadline) {
			return vm
		}
		time.Sleep(50 * time.Millisecond) // a session left by an exiting VM process goes by itself
	}
}

func snapshotName(vm vboxsim.VM) string {
	for _, s := range vm.Snapshots {
		if s.UUID == vm.Current {
			return s.Name
		}
	}
	return ""
}

// liveSimulators counts the simulator processes of this rig's world still
// running, by their command line.
func liveSimulators(t *testing.T, r *rig) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc on this host")
	}
	n := 0
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		argv0, _, _ := strings.Cut(string(cmdline), "\x00")
		if argv0 != r.sim.Bin {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err == nil && !plugintest.GoneWithin(pid, 30*time.Second) {
			n++
		}
	}
	return n
}
