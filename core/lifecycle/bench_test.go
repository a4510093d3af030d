package lifecycle_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// The benchmark scenario: a running VM whose power-off takes 1s in the
// fake hypervisor; everything else the fake does is instantaneous. What a
// cleanup takes beyond that second is the cleanup's own overhead.
const (
	simulatedPowerOff = time.Second
	benchWorld        = `
[plugins.fake.config.timing]
start = "0s"
poweroff = "1s"
unlock_after_stop = "0s"
restore = "0s"
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`
)

func benchPlugin(b *testing.B, table string) *host.Plugin {
	b.Helper()
	dir := b.TempDir()
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"fake": {AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: fakeBin}},
		File:    filepath.Join(dir, "config.toml"),
		Data:    []byte("[plugins.fake.config]\n" + table),
		Logger:  hclog.NewNullLogger(),
	})
	b.Cleanup(h.Close)
	p, err := h.Plugin("fake")
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func median(xs []time.Duration) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchCleanup runs one cleanup per iteration from a running VM and
// reports the median time beyond the simulated power-off.
func benchCleanup(b *testing.B, table string, cleanup func(context.Context, lifecycle.VM) (*lifecycle.OpReport, error)) {
	p := benchPlugin(b, table)
	s := config.DefaultLifecycle()
	s.StopLadder = []string{config.StopPowerOff, config.StopEmergency}
	vm := lifecycle.VM{Name: "vm1", Plugin: "fake", Driver: p, Settings: s}
	ctx := context.Background()
	var overheads []time.Duration
	calls := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := p.Start(ctx, "vm1"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		begun := time.Now()
		r, err := cleanup(ctx, vm)
		took := time.Since(begun)
		if err != nil {
			b.Fatal(err)
		}
		overheads = append(overheads, took-simulatedPowerOff)
		calls += r.StatusCalls
	}
	b.ReportMetric(float64(median(overheads).Microseconds())/1000, "overhead-ms")
	b.ReportMetric(float64(calls)/float64(b.N), "status-calls/op")
}

// BenchmarkCleanupOverhead is the composed cleanup (ladder, release
// confirmation by watch, restore, verify) on a driver that reports locks.
// The bound: median overhead at most 15ms.
func BenchmarkCleanupOverhead(b *testing.B) {
	m := lifecycle.New(lifecycle.Options{})
	b.Run("composed", func(b *testing.B) {
		benchCleanup(b, withoutNativeCleanup+benchWorld, func(ctx context.Context, vm lifecycle.VM) (*lifecycle.OpReport, error) {
			return m.Cleanup(ctx, vm)
		})
	})
	b.Run("native", func(b *testing.B) {
		benchCleanup(b, benchWorld, func(ctx context.Context, vm lifecycle.VM) (*lifecycle.OpReport, error) {
			return m.Cleanup(ctx, vm)
		})
	})
	b.Run("polling", func(b *testing.B) {
		// A driver that reports locks but cannot watch: adaptive polling.
		caps := `capabilities = ["stop.poweroff", "stop.emergency", "snapshot.restore", "status.lock", "unlock"]` + "\n"
		benchCleanup(b, caps+benchWorld, func(ctx context.Context, vm lifecycle.VM) (*lifecycle.OpReport, error) {
			return m.Cleanup(ctx, vm)
		})
	})
	b.Run("fixed-sleep-design", func(b *testing.B) {
		// For comparison, the design sandbox replaces, on the same scenario:
		// power-off, poll every second until off, sleep 2s "to let processes
		// exit", restore (and 5s after ACPI when power-off fails).
		benchCleanup(b, withoutNativeCleanup+benchWorld, fixedSleepCleanup)
	})
}

func fixedSleepCleanup(ctx context.Context, vm lifecycle.VM) (*lifecycle.OpReport, error) {
	r := &lifecycle.OpReport{}
	d := vm.Driver
	sleep := func(t time.Duration) { time.Sleep(t) }
	st, err := d.Status(ctx, vm.Name)
	r.StatusCalls++
	if err != nil {
		return r, err
	}
	if !st.Power.IsOff() {
		if err := d.Stop(ctx, vm.Name, hypervisor.StopPowerOff); err != nil {
			_ = d.Stop(ctx, vm.Name, hypervisor.StopACPI)
			sleep(5 * time.Second)
		}
	}
	for range 30 {
		st, err = d.Status(ctx, vm.Name)
		r.StatusCalls++
		if err == nil && st.Power.IsOff() {
			break
		}
		sleep(time.Second)
	}
	sleep(2 * time.Second)
	return r, d.Restore(ctx, vm.Name, "")
}
