package qemu_test

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// A QEMU VM at rest is saved at its snapshot: that is what restoring the
// test guest's snapshot, taken while it ran, leaves. Twenty tasks on two
// VMs must therefore never report their VM as left behind by an earlier
// run (§7.5); a QEMU process killed between two tasks must be.
func TestAVMAtRestIsNotLeftBehindAndAKilledOneIs(t *testing.T) {
	r := newRig(t, guestVM("rest-a", "ready"), guestVM("rest-b", "ready"))
	d := r.driver(t)
	ctx := plugintest.Context(t, 10*time.Minute)
	s := config.DefaultLifecycle()
	s.Snapshot = "ready"
	var vms []lifecycle.VM
	for _, name := range []string{"rest-a", "rest-b"} {
		vms = append(vms, lifecycle.VM{Name: name, Plugin: "qemu", Driver: d, Settings: s})
	}
	prof := config.NewProfile("cat", []string{"rest-a", "rest-b"}, "/tmp/{name}", "cat", "{sample}")
	e := engine.New(engine.Options{Lifecycle: lifecycle.New(lifecycle.Options{}), MaxStarting: 2})
	pool, err := engine.NewPool(ctx, e, vms, []config.Profile{prof})
	require.NoError(t, err)
	run := func(n int) *engine.Summary {
		var samples []engine.Sample
		dir := t.TempDir()
		for i := range n {
			p := filepath.Join(dir, fmt.Sprintf("s%02d.txt", i))
			require.NoError(t, os.WriteFile(p, fmt.Appendf(nil, "sample %d of %d\n", i, n), 0o644))
			smp, err := engine.OpenSample(p)
			require.NoError(t, err)
			samples = append(samples, smp)
		}
		sum, err := pool.RunBatch(ctx, engine.Batch{Samples: samples, Profiles: []string{"cat"}, OutDir: t.TempDir()})
		require.NoError(t, err)
		require.Zero(t, sum.Failed())
		return sum
	}

	sum := run(20)
	for _, rep := range sum.Reports {
		res := rep.Results[0]
		require.NotNil(t, res.Prepare)
		assert.False(t, res.Prepare.Reconciled, "%s on %s: its VM, at rest, was reported left behind: %+v", rep.Sample.Name, res.VM, res.Prepare.Steps)
	}
	for _, vm := range []string{"rest-a", "rest-b"} {
		st, err := d.Status(ctx, vm)
		require.NoError(t, err)
		assert.Equal(t, hypervisor.PowerSaved, st.Power, "%s at rest: %+v", vm, st)
	}

	// Between two tasks, something starts rest-a and its QEMU process is
	// killed: the next task finds it aborted and says so.
	require.NoError(t, d.Start(ctx, "rest-a"))
	waitFor(t, d, "rest-a", time.Minute, "running", func(st hypervisor.Status) bool { return st.Power == hypervisor.PowerRunning })
	data, err := os.ReadFile(r.vmFile("rest-a", "qemu.pid"))
	require.NoError(t, err)
	var pid int
	_, err = fmt.Sscan(string(data), &pid)
	require.NoError(t, err)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	waitFor(t, d, "rest-a", time.Minute, "its process gone", func(st hypervisor.Status) bool { return st.Power.IsOff() })

	sum = run(2)
	reconciled := 0
	for _, rep := range sum.Reports {
		res := rep.Results[0]
		if res.VM == "rest-a" && res.Prepare.Reconciled {
			reconciled++
			assert.Contains(t, res.Prepare.Steps[0].Outcome, "left aborted")
		} else {
			assert.False(t, res.Prepare.Reconciled, "%s on %s", rep.Sample.Name, res.VM)
		}
	}
	assert.Equal(t, 1, reconciled, "the task that next took rest-a reported it left behind")
}
