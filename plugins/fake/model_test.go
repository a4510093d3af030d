package fake_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// These tests run the model of the contract (sdk/conformance, "The
// model") against the fake, with the suite's named checks switched off:
// the reference keeps the model, and each violation mode breaks it, found
// by the model alone and shown by a short sequence.

// modelWorld is suiteWorld with quicker restores, which every sequence
// of the model begins with, and transitions that last a little longer,
// so that a step that finds a VM starting or stopping finds it so again
// when rapid replays the sequence to shorten it, on a busy machine too.
func modelWorld(extra string) string {
	return strings.NewReplacer(
		"restore = \"100ms\"\n", "restore = \"20ms\"\n",
		"start = \"10ms\"\n", "start = \"40ms\"\n",
		"acpi_shutdown = \"20ms\"\n", "acpi_shutdown = \"60ms\"\n",
		"poweroff = \"10ms\"\n", "poweroff = \"40ms\"\n",
		"emergency = \"5ms\"\n", "emergency = \"20ms\"\n",
		"unlock_after_stop = \"20ms\"\n", "unlock_after_stop = \"40ms\"\n",
	).Replace(suiteWorld(extra))
}

// modelTarget is the suite's target with the model's exploration bounded
// by e, and a guest command that runs for less long, which a driver that
// lets it run past its timeout makes every try wait for.
func modelTarget(connect conformance.Connector, e conformance.Exploration) conformance.Target {
	t := suiteTarget(connect)
	t.Guest.Sleep = []string{"sleep", "2"}
	// What the fake promises (a stop that takes effect, a session that
	// goes) it keeps within a second however busy the machine; a shorter
	// bound than the suite's keeps each try of a shortening quick.
	t.Timing.Settle = 4 * time.Second
	t.Model = e
	return t
}

// explore runs the model alone and returns its report.
func explore(t *testing.T, target conformance.Target, bound time.Duration) *conformance.ModelReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	rep, err := conformance.Collect(ctx, target, conformance.Options{Match: func(string) bool { return false }})
	require.NoError(t, err)
	require.NotNil(t, rep.Model)
	assert.Empty(t, rep.Restore, "the VMs are put back")
	return rep.Model
}

// The reference driver keeps the model: random sequences for a while
// (20 s, 8 s under -short), none deviates. The figure is the model's speed
// on this machine, as it happens to be loaded: reported, not asserted.
func TestTheFakeKeepsTheModel(t *testing.T) {
	t.Parallel()
	span := 20 * time.Second
	if testing.Short() {
		span = 8 * time.Second
	}
	m := explore(t, modelTarget(conformance.InProcess("fake", fake.New, modelWorld("")),
		conformance.Exploration{Duration: span}), 2*time.Minute)
	t.Log(m.Summary())
	if m.Deviation != nil {
		t.Errorf("the reference fake deviates from the model: %s\n%s", m.Deviation, strings.Join(m.Deviation.Log, "\n"))
	}
	assert.Empty(t, m.Error)
	assert.Positive(t, m.Sequences)
	assert.Positive(t, m.Operations)
}

// modelExtra is what the model needs of the fake's world instead of what
// the suite's checks do (violationCases' extra), by violation mode.
// Each widens the moment the mode's lie lasts, so that shortening the
// sequence, try after try on a busy machine, keeps showing it.
var modelExtra = map[fake.Violation]string{
	// Restores that take long enough for two at once to be timed (§13.1a).
	fake.ViolationSerialVMs: slowly("subject", "restore") + slowly("peer", "restore"),
	// A start that lasts, so that the next step finds the VM starting.
	fake.ViolationDoubleStartFails: slowly("subject", "start") + slowly("peer", "start"),
	// A session that outlives the process long enough to be seen held
	// right after the cleanup returned.
	fake.ViolationCleanupLeavesLock: slowly("subject", "unlock_after_stop") + slowly("peer", "unlock_after_stop"),
}

// modelCatchesAs are the violation modes the model may show under rules
// other than the one they break, and why.
var modelCatchesAs = map[fake.Violation][]string{
	// The fake's cleanup resolves the snapshot as Restore does, so it too
	// restores the current one.
	fake.ViolationRestoreCurrentOnly: {"§8.1"},
	// Work that goes on after the deadline is also an answer past it.
	fake.ViolationIgnoreDeadlines: {"§12.1a"},
	// A VM reported off while it stops shows in what follows: an emergency
	// stop that finds a process to kill, where the stale lock stays.
	fake.ViolationEarlyOff: {"§5.2b"},
	// The fake's cleanup resolves an empty snapshot name as Restore does.
	fake.ViolationEmptyRestoresFirst: {"§8.1"},
}

// modelBlind are the violation modes the model does not catch, and why;
// the docs list them. None.
var modelBlind = map[fake.Violation]string{}

// handful is the most steps a shrunk counterexample may have.
const handful = 8

// searchOps bounds each search for a violation mode.
const searchOps = 1500

// slowTries are the violation modes with which every try of a shortening
// takes seconds (a read that holds the VM, a command that runs on, a
// promise the model waits out), so that it needs more time.
var slowTries = []fake.Violation{fake.ViolationStatusLocks, fake.ViolationWatchSilent, fake.ViolationDeafCalls,
	fake.ViolationExecTimeoutIgnored, fake.ViolationEmergencyNoop, fake.ViolationEmergencyLingeringNoop,
	fake.ViolationLateWork, fake.ViolationIgnoreDeadlines, fake.ViolationWatchNeverCloses}

// catch explores the fake broken by vc until the model deviates, and
// shortens the sequence to a handful of steps. The search is bounded by
// operations alone, so that a busy machine makes it slower, not shorter;
// one that draws no sequence showing the mode is followed by one more,
// from another seed. A sequence whose steps race the fake's transitions
// may fail to show the deviation again on a busy machine, which ends
// rapid's shortening early: its seed draws it again, for up to two more
// tries.
func catch(vc violationCase) (*conformance.Report, error) {
	extra, ok := modelExtra[vc.violation]
	if !ok {
		extra = vc.extra
	}
	world := modelWorld(fmt.Sprintf("violations = [%q]\n%s", vc.violation, extra))
	shrink := time.Minute
	if slices.Contains(slowTries, vc.violation) {
		shrink = 3 * time.Minute
	}
	run := func(e conformance.Exploration) (*conformance.Report, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		return conformance.Collect(ctx, modelTarget(conformance.InProcess("fake", fake.New, world), e),
			conformance.Options{Match: func(string) bool { return false }})
	}
	rep, err := run(conformance.Exploration{Operations: searchOps, Shrink: shrink, ShrinkTo: handful})
	if err == nil && rep.Model != nil && rep.Model.Deviation == nil && rep.Model.Error == "" {
		rep, err = run(conformance.Exploration{Operations: searchOps, Shrink: shrink, ShrinkTo: handful})
	}
	for try := 0; try < 2 && err == nil && rep.Model != nil && rep.Model.Deviation != nil && len(rep.Model.Deviation.Script) > handful; try++ {
		d := rep.Model.Deviation
		again, aerr := run(conformance.Exploration{Operations: 300, Seed: d.Seed, Shrink: shrink, ShrinkTo: handful})
		if aerr == nil && again.Model != nil && again.Model.Deviation != nil && len(again.Model.Deviation.Script) < len(d.Script) &&
			slices.Equal(again.Model.Deviation.Rules, d.Rules) {
			again.Model.Deviation.Found = d.Found
			rep.Model.Deviation = again.Model.Deviation
		}
	}
	return rep, err
}

// Each violation mode is caught by the model alone, with the named checks
// switched off, within the bound, and shrunk to a handful of steps that
// break the mode's rule. The runs are mostly waiting, so several run at
// once.
//
// Whether random sequences meet a violation within the bound is chance,
// and the runs take minutes of a busy machine: `make model` runs it
// (SANDBOX_MODEL_MODES=1), not `make test`, which must not fail on chance.
func TestTheModelCatchesEveryViolationMode(t *testing.T) {
	if os.Getenv("SANDBOX_MODEL_MODES") == "" {
		t.Skip("whether the model meets each violation within its bound is chance, over minutes: `make model` (SANDBOX_MODEL_MODES=1) runs it")
	}
	t.Parallel()
	reports := make([]*conformance.Report, len(violationCases))
	errs := make([]error, len(violationCases))
	var wg sync.WaitGroup
	slots := make(chan struct{}, 8)
	for i, vc := range violationCases {
		if _, blind := modelBlind[vc.violation]; blind {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			reports[i], errs[i] = catch(vc)
		}()
	}
	wg.Wait()
	for i, vc := range violationCases {
		t.Run(string(vc.violation), func(t *testing.T) {
			if why, blind := modelBlind[vc.violation]; blind {
				t.Skipf("the model cannot catch it: %s", why)
			}
			require.NoError(t, errs[i])
			m := reports[i].Model
			require.NotNil(t, m)
			require.Empty(t, m.Error)
			require.NotNil(t, m.Deviation, "the model did not catch %s in %d operations (%d sequences)", vc.violation, m.Operations, m.Sequences)
			d := m.Deviation
			t.Logf("%s: caught in %s, %d steps found, %d after shrinking:\n%s", vc.violation, m.Duration.Round(time.Millisecond), d.Found, len(d.Script), d)
			want := append([]string{vc.rule}, modelCatchesAs[vc.violation]...)
			assert.True(t, slices.ContainsFunc(d.Rules, func(r string) bool { return slices.Contains(want, r) }),
				"%s breaks %s; the model cites %v:\n%s\n%s", vc.violation, vc.rule, d.Rules, d, strings.Join(d.Log, "\n"))
			assert.LessOrEqual(t, len(d.Script), handful, "the counterexample was not shrunk to a handful of steps")
			assert.NotZero(t, d.Seed, "a seed replays it")
			assert.Empty(t, reports[i].Restore, "the VMs are put back even after a deviation")
		})
	}
}

// The same seed draws the same sequences: two explorations from one seed
// take the same steps, and a counterexample's own seed draws it first.
func TestASeedReplaysTheSameSequence(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) []string {
		var mu sync.Mutex
		var steps []string
		e := conformance.Exploration{Operations: 40, Seed: seed, Trace: func(n int, step string) {
			mu.Lock()
			defer mu.Unlock()
			steps = append(steps, fmt.Sprintf("%d: %s", n, step))
		}}
		m := explore(t, modelTarget(conformance.InProcess("fake", fake.New, modelWorld("")), e), 2*time.Minute)
		require.Nil(t, m.Deviation)
		assert.Equal(t, seed, m.Seed)
		mu.Lock()
		defer mu.Unlock()
		return steps
	}
	first, second := run(20261207), run(20261207)
	require.NotEmpty(t, first)
	// The bound on operations ends each run at about the same step; what
	// both took, they took alike.
	n := min(len(first), len(second))
	assert.Greater(t, n, 20)
	assert.Equal(t, first[:n], second[:n])
	other := run(7)
	assert.NotEqual(t, first[:min(n, len(other))], other[:min(n, len(other))], "another seed draws other steps")
}

// A printed counterexample replays: the script of a deviation, read back
// and run against a fresh fake with the same violation, shows it again.
func TestACounterexampleReplaysAsItWasPrinted(t *testing.T) {
	t.Parallel()
	world := modelWorld(fmt.Sprintf("violations = [%q]\n", fake.ViolationRestoreKeepsDisk))
	script := "start subject settled\ncopy-in subject file=1 size=70000 settled\nstop subject poweroff\n" +
		"restore subject snapshot=clean settled\nstart subject settled\ncopy-out subject file=1 settled\n"
	steps, err := conformance.ParseScript(script)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	target := modelTarget(conformance.InProcess("fake", fake.New, world), conformance.Exploration{})
	d, err := conformance.Replay(ctx, target, steps)
	require.NoError(t, err)
	require.NotNil(t, d, "the disk kept across the restore")
	assert.Equal(t, []string{"§7.3"}, d.Rules)
	assert.Equal(t, strings.Split(strings.TrimSpace(script), "\n"), d.Script)

	// The same script on the reference shows nothing.
	d, err = conformance.Replay(ctx, modelTarget(conformance.InProcess("fake", fake.New, modelWorld("")), conformance.Exploration{}), steps)
	require.NoError(t, err)
	assert.Nil(t, d)
}

// BenchmarkModel measures the model's speed on the reference fake, in
// process: operations a minute, as `make bench` reports them, against
// the figure the model is meant to reach on a 2-core machine (2,000).
func BenchmarkModel(b *testing.B) {
	var ops int
	var took time.Duration
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		target := modelTarget(conformance.InProcess("fake", fake.New, modelWorld("")), conformance.Exploration{Operations: 400})
		rep, err := conformance.Collect(ctx, target, conformance.Options{Match: func(string) bool { return false }})
		cancel()
		require.NoError(b, err)
		require.Nil(b, rep.Model.Deviation)
		ops += rep.Model.Operations
		took += rep.Model.Duration
	}
	b.ReportMetric(float64(ops)/took.Minutes(), "ops/min")
}
