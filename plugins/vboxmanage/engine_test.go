package vboxmanage_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// engineVMs are n guest VMs named scan-1..scan-n, off on their clean
// snapshot.
func engineVMs(n int) []*vboxsim.VM {
	vms := make([]*vboxsim.VM, n)
	for i := range vms {
		vms[i] = guestVM(fmt.Sprintf("scan-%d", i+1), fmt.Sprintf("93a38cd7-ef00-47aa-9868-%012x", i+1))
	}
	return vms
}

// scanVMs are the first n VMs and the simulated guest's scanner as an
// analysis profile run on them.
func scanVMs(r *rig, n int) ([]lifecycle.VM, config.Profile) {
	var names []string
	var vms []lifecycle.VM
	for i := range n {
		name := fmt.Sprintf("scan-%d", i+1)
		names = append(names, name)
		vms = append(vms, managedVM(r, name))
	}
	p := config.NewProfile("scan", names, `C:\sandbox\{name}`, `C:\Tools\scan.exe`, "-o", `C:\sandbox\scan.log`, "{sample}")
	p.Artifacts = []string{`C:\sandbox\scan.log`}
	return vms, p
}

// runScan runs samples through the scanner on the first n VMs, as
// `sandbox run` does.
func runScan(ctx context.Context, t testing.TB, r *rig, n, maxStarting int, samples []engine.Sample) *engine.Summary {
	t.Helper()
	vms, p := scanVMs(r, n)
	e := engine.New(engine.Options{Lifecycle: lifecycle.New(lifecycle.Options{}), MaxStarting: maxStarting})
	return runBatch(ctx, t, e, vms, p, samples, t.TempDir())
}

// runBatch runs samples with profile p on vms through e.
func runBatch(ctx context.Context, t testing.TB, e *engine.Engine, vms []lifecycle.VM, p config.Profile,
	samples []engine.Sample, out string) *engine.Summary {
	t.Helper()
	pool, err := engine.NewPool(ctx, e, vms, []config.Profile{p})
	require.NoError(t, err)
	sum, err := pool.RunBatch(ctx, engine.Batch{Samples: samples, Profiles: []string{p.Name}, OutDir: out})
	require.NoError(t, err)
	return sum
}

func writeSamples(t testing.TB, n int) []engine.Sample {
	t.Helper()
	dir := t.TempDir()
	var out []engine.Sample
	for i := range n {
		data := fmt.Appendf(nil, "sample %d\n", i)
		if i%3 == 0 {
			data = append(data, []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$`+`EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`)...)
		}
		p := filepath.Join(dir, fmt.Sprintf("s%02d.bin", i))
		require.NoError(t, os.WriteFile(p, data, 0o644))
		s, err := engine.OpenSample(p)
		require.NoError(t, err)
		out = append(out, s)
	}
	return out
}

// TestEngineTenSamplesOnThreeVMs runs the engine's ten-sample run through
// the plugin binary against the simulated VBoxManage: every verdict right,
// never two tasks on one VM at once, every VM off, unlocked and restored.
func TestEngineTenSamplesOnThreeVMs(t *testing.T) {
	t.Parallel()
	r := newPluginRig(t, profiles[2], withVMs(engineVMs(3)...), withTiming(func(tm *vboxsim.Timing) {
		tm.GuestReady = vboxsim.Duration(200 * time.Millisecond)
	}))
	samples := writeSamples(t, 10)
	sum := runScan(plugintest.Context(t, 3*time.Minute), t, r, 3, 3, samples)
	require.Zero(t, sum.Failed())
	used := map[string][][2]time.Time{}
	for i, rep := range sum.Reports {
		want := engine.VerdictClean
		if i%3 == 0 {
			want = engine.VerdictMalicious
		}
		assert.Equal(t, want, rep.Verdict, rep.Sample.Name)
		res := rep.Results[0]
		require.Len(t, res.Artifacts, 1)
		assert.Empty(t, res.Artifacts[0].Error)
		var from time.Time
		for _, tr := range res.Transitions {
			if tr.Step == engine.StepPreparing {
				from = tr.At
			}
			if tr.Step.Final() {
				used[res.VM] = append(used[res.VM], [2]time.Time{from, tr.At})
			}
		}
	}
	assert.Len(t, used, 3, "every VM worked")
	for vm, ivs := range used {
		slices.SortFunc(ivs, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
		for i := 1; i < len(ivs); i++ {
			assert.False(t, ivs[i][0].Before(ivs[i-1][1]), "%s ran two tasks at once", vm)
		}
	}
	for i := range 3 {
		st, err := r.drv.Status(context.Background(), fmt.Sprintf("scan-%d", i+1))
		require.NoError(t, err)
		assert.Equal(t, hypervisor.PowerOff, st.Power)
		assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
		assert.Equal(t, "clean", st.CurrentSnapshot)
	}
}

// BenchmarkEngineInvocations reports the VBoxManage invocations per
// (sample, VM) task through the engine, with 30 registered VMs of which 8
// work at once, besides the guest operations (guestcontrol). The goal is
// at most 10.
func BenchmarkEngineInvocations(b *testing.B) {
	const registered, inUse, tasks = 30, 8, 16
	r := newPluginRig(b, profiles[2], withVMs(engineVMs(registered)...), withTiming(func(tm *vboxsim.Timing) {
		tm.GuestReady = vboxsim.Duration(200 * time.Millisecond)
	}))
	var perTask, guestPerTask float64
	for b.Loop() {
		samples := writeSamples(b, tasks)
		before := len(r.sim.Invocations(b))
		sum := runScan(plugintest.Context(b, 5*time.Minute), b, r, inUse, inUse, samples)
		require.Zero(b, sum.Failed())
		invs := r.sim.Invocations(b)[before:]
		guest := 0
		for _, inv := range invs {
			if len(inv.Args) > 0 && inv.Args[0] == "guestcontrol" {
				guest++
			}
		}
		perTask = float64(len(invs)-guest) / tasks
		guestPerTask = float64(guest) / tasks
	}
	b.ReportMetric(perTask, "vboxmanage/task")
	b.ReportMetric(guestPerTask, "guestcontrol/task")
}
