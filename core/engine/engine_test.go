package engine_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

var successSteps = []engine.Step{
	engine.StepQueued, engine.StepPreparing, engine.StepRestoring, engine.StepStarting, engine.StepWaitingGuest,
	engine.StepCopying, engine.StepAnalyzing, engine.StepCollecting, engine.StepCleaning, engine.StepDone,
}

func TestCompleteCleanupAfterASuccessfulTask(t *testing.T) {
	r := newRig(t, vmTable("vm1"))
	ctx := plugintest.Context(t, time.Minute)
	clean := sample(t, "notes.txt", []byte("harmless\n"))
	bad := sample(t, "eicar.com", eicarBytes())
	pool := with{scanProfile(t, "scan", []string{"vm1"}), []lifecycle.VM{r.vm("vm1")}}
	sum := r.run(ctx, 0, []engine.Sample{clean, bad}, pool)

	require.Len(t, sum.Reports, 2)
	for i, want := range []engine.Verdict{engine.VerdictClean, engine.VerdictMalicious} {
		rep := sum.Reports[i]
		assert.Equal(t, want, rep.Verdict, rep.Sample.Name)
		res := rep.Results[0]
		assert.Equal(t, engine.StepDone, res.State, res.Error)
		assert.Equal(t, successSteps, steps(res))
		assert.Equal(t, "vm1", res.VM)
		require.NotNil(t, res.Cleanup)
		assert.Empty(t, res.Cleanup.Error)
		require.Len(t, res.Artifacts, 1)
		log, err := os.ReadFile(filepath.Join(r.out, rep.Sample.SHA256, res.Artifacts[0].Path))
		require.NoError(t, err)
		assert.Contains(t, string(log), string(want[:0])+map[engine.Verdict]string{
			engine.VerdictClean: "clean", engine.VerdictMalicious: "infected"}[want])

		// The report on disk is the one returned.
		onDisk, err := engine.ReadReport(filepath.Join(r.out, rep.Sample.SHA256, engine.ReportFile))
		require.NoError(t, err)
		assert.Equal(t, want, onDisk.Verdict)
		assert.Equal(t, rep.Sample.SHA256, onDisk.Sample.SHA256)
	}
	r.requireClean("vm1")
	// Per task: the VM (running when found) was stopped once, restored
	// before and after, started once, and got the three guest operations.
	assert.Equal(t, []string{
		"cleanup", "restore", "start", "copy-in", "exec", "copy-out", "cleanup",
		"restore", "start", "copy-in", "exec", "copy-out", "cleanup",
	}, r.sent("vm1"))
}

func TestCompleteCleanupAfterAFailedTask(t *testing.T) {
	r := newRig(t, vmTable("vm1"))
	ctx := plugintest.Context(t, time.Minute)
	prof := scanProfile(t, "slow", []string{"vm1"}, func(c *config.Profile) {
		c.Command = []string{"sleep", "30"}
		c.Timeout = 300 * time.Millisecond
	})
	sum := r.run(ctx, 0, []engine.Sample{sample(t, "a.exe", []byte("a"))},
		with{prof, []lifecycle.VM{r.vm("vm1")}})

	res := sum.Reports[0].Results[0]
	assert.Equal(t, engine.StepFailed, res.State)
	assert.Equal(t, engine.StepAnalyzing, res.FailedStep, "the task failure is kept")
	assert.Contains(t, res.Error, "ran past its timeout (300ms)")
	assert.Equal(t, engine.VerdictError, res.Verdict)
	assert.Equal(t, engine.VerdictError, sum.Reports[0].Verdict)
	require.NotNil(t, res.Cleanup)
	assert.Empty(t, res.Cleanup.Error, "the VM was still cleaned")
	assert.Equal(t, []engine.Step{engine.StepCleaning, engine.StepFailed}, steps(res)[len(res.Transitions)-2:])
	r.requireClean("vm1")
	assert.Equal(t, 1, sum.Failed())
}

// TestAFaultAtEachStepLeavesTheVMClean injects one fault per step of a
// task: every time the report names the step, and the VM ends off,
// unlocked and restored, or quarantined with the reason.
func TestAFaultAtEachStepLeavesTheVMClean(t *testing.T) {
	for _, tc := range []struct {
		name    string
		faults  string
		adjust  func(*config.Lifecycle)
		profile func(*config.Profile)
		step    engine.Step
		error   string
		verdict engine.Verdict
		// quarantined: the VM cannot be cleaned and must be quarantined.
		quarantined bool
	}{
		{name: "restore", faults: "restore_failures = 1", step: engine.StepRestoring, error: "restore"},
		{name: "start", faults: "start_failures = 1", step: engine.StepStarting, error: "terminated unexpectedly during startup"},
		{name: "guest never ready", faults: "", step: engine.StepWaitingGuest, error: "not ready within ready_timeout",
			profile: func(c *config.Profile) { c.ReadyTimeout = 400 * time.Millisecond }},
		{name: "copy in", faults: "copy_in_failures = 1", step: engine.StepCopying, error: "Copying",
			profile: func(c *config.Profile) { c.ReadyCommand = []string{"true"} }},
		{name: "exec timeout", step: engine.StepAnalyzing, error: "ran past its timeout",
			profile: func(c *config.Profile) {
				c.Command = []string{"sleep", "30"}
				c.Timeout = 200 * time.Millisecond
			}},
		{name: "copy out", faults: "copy_out_failures = 1", step: engine.StepCollecting, error: "from the guest failed",
			verdict: engine.VerdictClean},
		{name: "cleanup", faults: "acpi_ignored = true\nstuck_in_stopping = true", step: engine.StepCleaning,
			error: "cleanup failed", verdict: engine.VerdictClean, quarantined: true,
			adjust: func(s *config.Lifecycle) {
				s.NativeCleanup = false
				s.StopLadder = s.StopLadder[:2] // acpi, poweroff: nothing ends a VM stuck in stopping
				s.ACPITimeout, s.PowerOffTimeout = 200*time.Millisecond, 200*time.Millisecond
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			table := "[vms.vm1]\nstate = \"off\"\nsnapshots = [\"clean\"]\n"
			if tc.name == "guest never ready" {
				table += "[vms.vm1.timing]\nguest_ready = \"1h\"\n"
			}
			if tc.faults != "" {
				table += "[vms.vm1.faults]\n" + tc.faults + "\n"
			}
			r := newRig(t, table)
			var adjust []func(*config.Lifecycle)
			if tc.adjust != nil {
				adjust = append(adjust, tc.adjust)
			}
			var edit []func(*config.Profile)
			if tc.profile != nil {
				edit = append(edit, tc.profile)
			}
			sum := r.run(plugintest.Context(t, time.Minute), 0, []engine.Sample{sample(t, "s.txt", []byte("x"))},
				with{scanProfile(t, "scan", []string{"vm1"}, edit...), []lifecycle.VM{r.vm("vm1", adjust...)}})
			res := sum.Reports[0].Results[0]
			assert.Equal(t, engine.StepFailed, res.State)
			assert.Equal(t, tc.step, res.FailedStep, res.Error)
			assert.Contains(t, res.Error, tc.error)
			want := tc.verdict
			if want == "" {
				want = engine.VerdictError
			}
			assert.Equal(t, want, res.Verdict, "a failure after the analysis keeps its verdict")
			if tc.quarantined {
				assert.NotEmpty(t, res.Quarantined)
				_, q, err := r.quarantine.Get(context.Background(), "fake/vm1")
				require.NoError(t, err)
				assert.True(t, q, "the VM is quarantined")
				assert.Contains(t, sum.Unusable["vm1"], "quarantined")
				return
			}
			assert.Empty(t, res.Quarantined)
			assert.Contains(t, steps(res), engine.StepCleaning)
			r.requireClean("vm1")
		})
	}
}

func TestTenSamplesOnThreeVMs(t *testing.T) {
	r := newRig(t, vmTable("vm1", "vm2", "vm3"))
	prof := scanProfile(t, "scan", []string{"vm1", "vm2", "vm3"}, func(c *config.Profile) {
		c.Command = []string{"sleep", "0.2"}
		c.Verdict = config.Verdict{MaliciousExitCodes: []int{1}, CleanExitCodes: []int{0}}
		c.Artifacts = nil
	})
	sum := r.run(plugintest.Context(t, time.Minute), 3, cleanSamples(t, 10),
		with{prof, []lifecycle.VM{r.vm("vm1"), r.vm("vm2"), r.vm("vm3")}})

	require.Zero(t, sum.Failed())
	ivs := busy(sum)
	require.Len(t, ivs, 10)
	perVM := map[string][]interval{}
	for _, iv := range ivs {
		perVM[iv.vm] = append(perVM[iv.vm], iv)
	}
	require.Len(t, perVM, 3, "every VM worked")
	for vm, list := range perVM {
		for i := 1; i < len(list); i++ {
			assert.False(t, list[i].start.Before(list[i-1].end), "%s ran two tasks at once: %v and %v", vm, list[i-1], list[i])
		}
	}
	// At some moment all three VMs held a task.
	allBusy := slices.ContainsFunc(ivs, func(at interval) bool {
		n := 0
		for _, iv := range ivs {
			if !at.start.Before(iv.start) && at.start.Before(iv.end) {
				n++
			}
		}
		return n == 3
	})
	assert.True(t, allBusy, "the three VMs never worked at the same time")
	for _, vm := range []string{"vm1", "vm2", "vm3"} {
		r.requireClean(vm)
	}
}

func TestCancellingARunCleansEveryVMAndLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	r := newRig(t, vmTable("vm1", "vm2", "vm3"))
	prof := scanProfile(t, "scan", []string{"vm1", "vm2", "vm3"}, func(c *config.Profile) {
		c.Command = []string{"sleep", "30"}
		c.Artifacts = nil
	})
	ctx, cancel := context.WithCancel(plugintest.Context(t, time.Minute))
	pool, names := r.pool(ctx, 3, with{prof, []lifecycle.VM{r.vm("vm1"), r.vm("vm2"), r.vm("vm3")}})
	// Interrupt once all three VMs are analysing.
	analysing := map[string]bool{}
	pool.Events().Subscribe(func(ev engine.Event) {
		if ev.Step == engine.StepAnalyzing {
			analysing[ev.VM] = true
			if len(analysing) == 3 {
				cancel()
			}
		}
	})
	begun := time.Now()
	sum, err := pool.RunBatch(ctx, engine.Batch{Samples: cleanSamples(t, 10), Profiles: names, OutDir: r.out})
	require.NoError(t, err)
	assert.Less(t, time.Since(begun), 20*time.Second, "interrupted long before the 30 s analyses end")
	assert.True(t, sum.Cancelled)
	var cancelled, cleaned int
	for _, rep := range sum.Reports {
		res := rep.Results[0]
		assert.Equal(t, engine.StepCancelled, res.State)
		cancelled++
		if res.Cleanup != nil {
			assert.Empty(t, res.Cleanup.Error)
			assert.Equal(t, engine.StepAnalyzing, res.FailedStep)
			cleaned++
		}
		_, err := os.Stat(filepath.Join(r.out, rep.Sample.SHA256, engine.ReportFile))
		assert.NoError(t, err, "every sample has its report, interrupted or not")
	}
	assert.Equal(t, 10, cancelled)
	assert.Equal(t, 3, cleaned, "the three tasks in flight were cleaned up; the others never started")
	for _, vm := range []string{"vm1", "vm2", "vm3"} {
		r.requireClean(vm)
	}
	r.driver.Close()
}

func TestAQuarantinedVMIsSkipped(t *testing.T) {
	r := newRig(t, vmTable("vm1", "vm2"))
	require.NoError(t, r.quarantine.Mark(context.Background(), "fake/vm2", "an earlier cleanup failed"))
	prof := scanProfile(t, "scan", []string{"vm1", "vm2"})
	sum := r.run(plugintest.Context(t, time.Minute), 0, cleanSamples(t, 3),
		with{prof, []lifecycle.VM{r.vm("vm1"), r.vm("vm2")}})
	require.Zero(t, sum.Failed())
	for _, rep := range sum.Reports {
		assert.Equal(t, "vm1", rep.Results[0].VM)
	}
	assert.Contains(t, sum.Unusable["vm2"], "an earlier cleanup failed")
	assert.Empty(t, r.sent("vm2"), "nothing was sent to the quarantined VM")
}

func TestAProfileWithoutUsableVMsFailsItsTasks(t *testing.T) {
	r := newRig(t, vmTable("vm1"))
	require.NoError(t, r.quarantine.Mark(context.Background(), "fake/vm1", "disk full"))
	sum := r.run(plugintest.Context(t, time.Minute), 0, cleanSamples(t, 2),
		with{scanProfile(t, "scan", []string{"vm1"}), []lifecycle.VM{r.vm("vm1")}})
	for _, rep := range sum.Reports {
		res := rep.Results[0]
		assert.Equal(t, engine.StepFailed, res.State)
		assert.Equal(t, engine.StepQueued, res.FailedStep)
		assert.Contains(t, res.Error, "no usable VM left for profile scan")
		assert.Contains(t, res.Error, "disk full")
	}
}

func TestMaxStartingCapsVMsBootingAtOnce(t *testing.T) {
	r := newRig(t, vmTable("vm1", "vm2", "vm3", "vm4"))
	prof := scanProfile(t, "scan", []string{"vm1", "vm2", "vm3", "vm4"}, func(c *config.Profile) { c.Artifacts = nil })
	var vms []lifecycle.VM
	for _, n := range prof.VMs {
		vms = append(vms, r.vm(n))
	}
	sum := r.run(plugintest.Context(t, time.Minute), 1, cleanSamples(t, 8), with{prof, vms})
	require.Zero(t, sum.Failed())
	// A VM boots from its start call (the fake's journal has its time)
	// until its guest is ready (it accepts the sample: copying begins).
	// With max_starting = 1 no two VMs boot at once.
	type boot struct {
		vm       string
		from, to time.Time
	}
	var boots []boot
	for _, vm := range prof.VMs {
		var starts []time.Time
		for _, e := range r.entries(vm) {
			if e.Op == "start" {
				starts = append(starts, e.Time)
			}
		}
		var readies []time.Time
		for _, rep := range sum.Reports {
			res := rep.Results[0]
			for _, tr := range res.Transitions {
				if res.VM == vm && tr.Step == engine.StepCopying {
					readies = append(readies, tr.At)
				}
			}
		}
		slices.SortFunc(readies, time.Time.Compare)
		require.Len(t, readies, len(starts), vm)
		for i := range starts {
			boots = append(boots, boot{vm, starts[i], readies[i]})
		}
	}
	require.Len(t, boots, 8)
	slices.SortFunc(boots, func(a, b boot) int { return a.from.Compare(b.from) })
	for i := 1; i < len(boots); i++ {
		assert.False(t, boots[i].from.Before(boots[i-1].to), "%v started while %v booted", boots[i], boots[i-1])
	}
}

func countOf(list []string, x string) int {
	n := 0
	for _, s := range list {
		if s == x {
			n++
		}
	}
	return n
}

func ptr[T any](v T) *T { return &v }

func TestAnalyzeRunsOneTaskOnALeasedVM(t *testing.T) {
	r := newRig(t, vmTable("vm1", "vm2"))
	ctx := plugintest.Context(t, time.Minute)
	e := r.engine(0)
	prof := scanProfile(t, "scan", []string{"vm1", "vm2"})
	task := func(s engine.Sample) engine.Task {
		return engine.Task{ID: "t", Sample: s, Profile: prof, Dir: filepath.Join(r.out, s.SHA256)}
	}
	lease, err := r.manager.Lease(ctx, r.vm("vm1"))
	require.NoError(t, err)
	res, out := e.Analyze(ctx, lease, task(sample(t, "e.com", eicarBytes())))
	lease.Release()
	assert.True(t, out.Usable(), out)
	assert.Equal(t, engine.StepDone, res.State, res.Error)
	assert.Equal(t, engine.VerdictMalicious, res.Verdict)
	assert.Equal(t, successSteps[1:], steps(res), "the task was queued by whoever leased the VM")
	r.requireClean("vm1")

	require.NoError(t, r.quarantine.Mark(ctx, "fake/vm2", "broken"))
	lease, err = r.manager.Lease(ctx, r.vm("vm2"))
	require.NoError(t, err)
	res, out = e.Analyze(ctx, lease, task(sample(t, "s.txt", []byte("x"))))
	lease.Release()
	assert.Equal(t, engine.VMQuarantined, out.State)
	assert.Contains(t, out.Reason, "broken")
	assert.Equal(t, engine.StepQueued, res.State, "the task never reached the quarantined VM")
	assert.Empty(t, r.sent("vm2"))
}

// What a task takes from its guest is bounded by its profile: the
// command's output is cut at max_output and the report says so; artifacts
// past artifacts_max_size or artifacts_max_count are dropped, and the
// report says which and why. Dropping is no failure of the task.
func TestWhatComesBackFromTheGuestIsBounded(t *testing.T) {
	for _, tc := range []struct {
		name           string
		count          int
		size           int64
		droppedBecause string
	}{
		{"by size", 5, 40, "artifacts_max_size (40 bytes; 25 kept)"}, // the sample is 25 bytes: the second does not fit
		{"by count", 1, 1 << 20, "artifacts_max_count (1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, vmTable("vm1"))
			prof := scanProfile(t, "bounded", []string{"vm1"}, func(c *config.Profile) {
				c.SamplePath = "/s/sample"
				c.Command = []string{"dd", "bs=1024", "count=64"}
				c.MaxOutput = 4096
				c.Artifacts = []string{"/s/sample", "/s/sample"}
				c.ArtifactsMaxCount, c.ArtifactsMaxSize = tc.count, tc.size
			})
			s := sample(t, "s.txt", []byte("twenty-five bytes of text"))
			sum := r.run(plugintest.Context(t, time.Minute), 0, []engine.Sample{s}, with{prof, []lifecycle.VM{r.vm("vm1")}})
			res := sum.Reports[0].Results[0]
			require.Equal(t, engine.StepDone, res.State, res.Error)
			assert.Len(t, res.Stdout, 4096, "the output kept is max_output")
			assert.True(t, res.StdoutTruncated, "and the report says it was cut")
			require.Len(t, res.Artifacts, 2)
			assert.Empty(t, res.Artifacts[0].Error)
			assert.Equal(t, int64(25), res.Artifacts[0].Size)
			assert.True(t, res.Artifacts[1].Dropped)
			assert.Contains(t, res.Artifacts[1].Error, tc.droppedBecause)
			entries, err := os.ReadDir(filepath.Join(r.out, s.SHA256, "bounded", "artifacts"))
			require.NoError(t, err)
			assert.Len(t, entries, 1, "nothing dropped is left on the host")
			r.requireClean("vm1")
		})
	}
}
