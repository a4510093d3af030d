package engine_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// benchTiming is each fake transition a task goes through, in config
// form and summed: restore before, start, guest ready, power-off, the
// session's release, restore after.
const (
	benchStep   = 100 * time.Millisecond
	benchTiming = `
[timing]
start = "100ms"
acpi_shutdown = "100ms"
poweroff = "100ms"
emergency = "100ms"
restore = "100ms"
unlock_after_stop = "100ms"
guest_ready = "100ms"
`
	// benchFakePerTask is the fake's own time per task at benchTiming:
	// restore, start, guest_ready, power-off, unlock, restore.
	benchFakePerTask = 6 * benchStep
)

// BenchmarkEngineWallTime runs M tasks on N fake VMs, each analysis
// taking T, and reports the wall time against the ideal: every VM busy
// all the time, ceil(M/N) tasks in a row, each costing T plus the fake's
// own transition times. The engine's overhead is what exceeds 1.0.
func BenchmarkEngineWallTime(b *testing.B) {
	for _, c := range []struct{ m, n int }{{12, 4}, {24, 8}} {
		b.Run(fmt.Sprintf("M=%d/N=%d", c.m, c.n), func(b *testing.B) {
			const analysis = 2 * time.Second
			var table, names []string
			for i := range c.n {
				names = append(names, fmt.Sprintf("vm%d", i+1))
				table = append(table, fmt.Sprintf("[vms.vm%d]\nsnapshots = [\"clean\"]\n", i+1))
			}
			r := newRigWith(b, benchTiming, strings.Join(table, ""))
			prof := scanProfile(b, "bench", names, func(c *config.Profile) {
				c.Command = []string{"sleep", analysis.String()}
				c.Artifacts = nil
			})
			var vms []lifecycle.VM
			for _, n := range names {
				vms = append(vms, r.vm(n, func(s *config.Lifecycle) { s.NativeCleanup = true }))
			}
			ideal := time.Duration(math.Ceil(float64(c.m)/float64(c.n))) * (analysis + benchFakePerTask)
			var ratio float64
			for b.Loop() {
				samples := cleanSamples(b, c.m)
				ctx := plugintest.Context(b, 5*time.Minute)
				sum := r.run(ctx, c.n, samples, with{prof, vms})
				require.Zero(b, sum.Failed())
				ratio = float64(sum.Duration) / float64(ideal)
				logSteps(b, sum)
			}
			b.ReportMetric(ratio, "x-ideal")
			b.ReportMetric(ideal.Seconds(), "ideal-s")
		})
	}
}

// logSteps logs the mean time tasks spent in each step.
func logSteps(b *testing.B, sum *engine.Summary) {
	total := map[engine.Step]time.Duration{}
	n := 0
	for _, rep := range sum.Reports {
		for _, res := range rep.Results {
			n++
			for i := 1; i < len(res.Transitions); i++ {
				total[res.Transitions[i-1].Step] += res.Transitions[i].At.Sub(res.Transitions[i-1].At)
			}
		}
	}
	var parts []string
	for _, st := range []engine.Step{engine.StepPreparing, engine.StepRestoring, engine.StepStarting, engine.StepWaitingGuest,
		engine.StepCopying, engine.StepAnalyzing, engine.StepCollecting, engine.StepCleaning} {
		if d, ok := total[st]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", st, (d/time.Duration(n)).Round(time.Millisecond)))
		}
	}
	b.Logf("mean per task: %s", strings.Join(parts, ", "))
}
