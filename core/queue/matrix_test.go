//go:build unix

package queue_test

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

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	pluginhost "github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The fault matrix: every fault the fake hypervisor can inject, and a
// plugin killed with SIGKILL, and the task cancelled, each put at the
// start of every step of a task, one cell each, and every cell through
// both front doors (`sandbox run` and the service's River worker). In
// every cell the task ends, its report names the step that failed, and
// the VM ends off, unlocked and on its clean snapshot, or quarantined with
// a reason; no plugin process outlives its host; both doors end the cell
// the same way; and once every cell has run, no goroutine is left.

var builds plugintest.Cache

// matrixSteps are the steps a fault is put at, in the order of a task.
var matrixSteps = []engine.Step{
	engine.StepPreparing, engine.StepRestoring, engine.StepStarting, engine.StepWaitingGuest,
	engine.StepCopying, engine.StepAnalyzing, engine.StepCollecting, engine.StepCleaning,
}

// matrixFaults are the fake's faults, as injected while the task runs.
var matrixFaults = map[string]fake.Faults{
	"acpi_ignored":                {ACPIIgnored: true},
	"stuck_in_stopping":           {StuckInStopping: true},
	"poweroff_failures":           {PowerOffFailures: 2},
	"poweroff_error=locked":       {PowerOffFailures: 2, PowerOffError: "locked"},
	"poweroff_error=invalid":      {PowerOffFailures: 2, PowerOffError: "invalid_state"},
	"lock_held_after_stop":        {LockHeldAfterStop: 700 * time.Millisecond},
	"stale_lock_after_stop":       {StaleLockAfterStop: true},
	"restore_failures":            {RestoreFailures: 1},
	"restore_failures (repeated)": {RestoreFailures: 10},
	"start_failures":              {StartFailures: 1},
	"status_failures":             {StatusFailures: 2},
	"status_failures (all)":       {StatusFailures: 1 << 20},
	"slow":                        {Slow: 150 * time.Millisecond},
	"copy_in_failures":            {CopyInFailures: 1},
	"copy_out_failures":           {CopyOutFailures: 1},
}

// cellOutcome is what a cell found through one door.
type cellOutcome struct {
	door, fault, step string
	ok                bool
	why               string
	// state and quarantined are how the task and the VM ended, for
	// holding the two doors to each other.
	state       engine.Step
	quarantined bool
}

func TestFaultMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault matrix runs a task per cell; -short skips it")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	bin, err := builds.Path("github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake")
	require.NoError(t, err)
	t.Cleanup(func() { builds.Close() })

	var mu sync.Mutex
	var outcomes []cellOutcome
	record := func(o cellOutcome) {
		mu.Lock()
		defer mu.Unlock()
		outcomes = append(outcomes, o)
	}
	columns := []string{"plugin SIGKILLed", "task cancelled"}
	for f := range matrixFaults {
		columns = append(columns, f)
	}
	t.Run("cells", func(t *testing.T) {
		for _, d := range doors {
			for _, fault := range columns {
				for _, step := range matrixSteps {
					t.Run(d.name+"/"+fault+"@"+string(step), func(t *testing.T) {
						t.Parallel()
						o := runCell(t, bin, d, fault, step)
						record(o)
						if !o.ok {
							t.Error(o.why)
						}
					})
				}
			}
		}
	})
	for _, d := range doors {
		printMatrix(t, d.name, outcomes, columns)
	}
	// How the task and the VM end does not depend on the door: the same
	// final state, the same quarantine. (A killed plugin is relaunched
	// while the step retries, and whether the retry succeeds before its
	// deadline depends on the machine's load, not on the door: those
	// cells are held to the expectations above only.)
	byCell := map[string]map[string]cellOutcome{}
	for _, o := range outcomes {
		if byCell[o.fault+"@"+o.step] == nil {
			byCell[o.fault+"@"+o.step] = map[string]cellOutcome{}
		}
		byCell[o.fault+"@"+o.step][o.door] = o
	}
	for cell, by := range byCell {
		run, serve := by["run"], by["serve"]
		if run.ok && serve.ok && run.fault != "plugin SIGKILLed" {
			assert.Equal(t, run.quarantined, serve.quarantined, "%s: quarantined through run, not through serve, or the other way", cell)
			assert.Equal(t, run.state, serve.state, "%s: the task ended %s through run, %s through serve", cell, run.state, serve.state)
		}
	}
}

// runCell runs one task on one VM of a fresh fake world, in a plugin
// process, through door, with the fault put at the start of step.
func runCell(t *testing.T, bin string, d door, fault string, step engine.Step) cellOutcome {
	o := cellOutcome{door: d.name, fault: fault, step: string(step)}
	fail := func(format string, args ...any) cellOutcome {
		o.why = fmt.Sprintf(format, args...)
		return o
	}
	dir := t.TempDir()
	c := fake.Config{StateDir: "world", Timing: fake.Timing{Start: 30 * time.Millisecond, ACPIShutdown: 50 * time.Millisecond,
		PowerOff: 30 * time.Millisecond, Emergency: 10 * time.Millisecond, Restore: 30 * time.Millisecond,
		UnlockAfterStop: 50 * time.Millisecond, GuestReady: 50 * time.Millisecond},
		VMs: map[string]fake.VMConfig{"vm1": fake.RunningAt("clean")}}
	world := c.TOML("fake")
	path := filepath.Join(dir, "config.toml")
	require.NoError(t, os.WriteFile(path, []byte(world), 0o644))
	h := pluginhost.New(pluginhost.Options{Plugins: map[string]config.Plugin{"fake": config.NewPlugin(bin)}, File: path, Data: []byte(world),
		Logger: hclog.NewNullLogger()})
	defer h.Close()
	plugin, err := h.Plugin("fake")
	require.NoError(t, err)
	// The test's own view of the world, to inject faults into the plugin's.
	drv, err := fake.New(sdk.ConfigFromTOML("fake", path, []byte(world)), nil)
	require.NoError(t, err)
	control := drv.(*fake.Driver)
	defer control.Close()

	s := cellLifecycle()
	vm := lifecycle.VM{Name: "vm1", Plugin: "fake", Driver: plugin, Settings: s}
	quarantine := lifecycle.NewMemoryQuarantine()
	m := lifecycle.New(lifecycle.Options{Quarantine: quarantine})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var pids []int
	var once sync.Once
	var interrupt func()
	events := engine.NewEvents()
	events.Subscribe(func(ev engine.Event) {
		if ev.Step != step {
			return
		}
		once.Do(func() {
			switch fault {
			case "plugin SIGKILLed":
				if pid := plugin.Pid(); pid > 0 {
					pids = append(pids, pid)
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			case "task cancelled":
				interrupt()
			default:
				if err := control.Inject("vm1", matrixFaults[fault]); err != nil {
					t.Errorf("inject %s: %v", fault, err)
				}
			}
		})
	})
	e := engine.New(engine.Options{Lifecycle: m, Events: events})
	pool, err := engine.NewPool(ctx, e, []lifecycle.VM{vm}, []config.Profile{cellProfile("vm1")})
	require.NoError(t, err)
	res, reportDir := d.run(t, ctx, pool, m, dir, sampleFile(t, "s.txt", "x"), func(f func()) { interrupt = f })
	if !res.State.Final() {
		return fail("the task did not end: %s", res.State)
	}
	if res.State != engine.StepDone && res.FailedStep == "" {
		return fail("the task %s without naming the step", res.State)
	}
	if _, err := os.Stat(filepath.Join(reportDir, engine.ReportFile)); err != nil {
		return fail("no report: %v", err)
	}
	o.state = res.State
	t.Logf("the task ended %s at %q: %s", res.State, res.FailedStep, res.Error)

	// Where is the VM? Read through the control view, with the injected
	// faults out of the way (a status fault must not hide the state).
	if pid := plugin.Pid(); pid > 0 {
		pids = append(pids, pid)
	}
	h.Close()
	for _, pid := range pids {
		if !plugintest.GoneWithin(pid, 2*time.Second) {
			return fail("plugin process %d outlived its host", pid)
		}
	}
	entry, quarantined, err := quarantine.Get(context.Background(), vm.Key())
	require.NoError(t, err)
	switch {
	case quarantined && entry.Reason == "":
		return fail("quarantined without a reason")
	case quarantined:
		o.ok, o.why, o.quarantined = true, "quarantined: "+entry.Reason, true
		return o
	}
	// Not quarantined: the VM must be clean. The faults are taken back
	// first, so that a status fault does not hide the VM's state.
	require.NoError(t, control.Heal("vm1"))
	st, err := readState(control)
	if err != nil {
		return fail("status: %v", err)
	}
	clean := st.Power.IsOff() && st.Lock == hypervisor.LockUnlocked && st.CurrentSnapshot == "clean"
	switch {
	case clean:
		o.ok, o.why = true, string(res.State)
	default:
		return fail("the VM is %s/%s on %q, and not quarantined (task %s at %s: %s)", st.Power, st.Lock,
			st.CurrentSnapshot, res.State, res.FailedStep, res.Error)
	}
	return o
}

// readState reads the VM's state the way an operator would after the run,
// once the transitions under way have settled.
func readState(d *fake.Driver) (hypervisor.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st hypervisor.Status
	var err error
	for ctx.Err() == nil {
		st, err = d.Status(ctx, "vm1")
		if err == nil && (st.Power.IsOff() || st.Power == hypervisor.PowerRunning) && st.Lock != "" {
			return st, nil
		}
		time.Sleep(20 * time.Millisecond) // a status fault answers unavailable a few times
	}
	return st, err
}

// printMatrix prints one door's cells: a row per fault, a column per step.
func printMatrix(t *testing.T, door string, outcomes []cellOutcome, columns []string) {
	byCell := map[string]cellOutcome{}
	passed := 0
	for _, o := range outcomes {
		if o.door != door {
			continue
		}
		byCell[o.fault+"@"+o.step] = o
		if o.ok {
			passed++
		}
	}
	sort.Strings(columns)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-28s", "fault \\ step")
	for _, s := range matrixSteps {
		fmt.Fprintf(&b, " %-13s", s)
	}
	b.WriteString("\n")
	for _, f := range columns {
		fmt.Fprintf(&b, "%-28s", f)
		for _, s := range matrixSteps {
			mark := "-"
			if o, ok := byCell[f+"@"+string(s)]; ok {
				mark = "FAIL"
				if o.ok {
					mark = "ok"
					if strings.HasPrefix(o.why, "quarantined") {
						mark = "ok (quar.)"
					}
				}
			}
			fmt.Fprintf(&b, " %-13s", mark)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "fault matrix through %s: %d of %d cells passed", door, passed, len(columns)*len(matrixSteps))
	t.Log(b.String())
	assert.Equal(t, len(columns)*len(matrixSteps), passed)
}
