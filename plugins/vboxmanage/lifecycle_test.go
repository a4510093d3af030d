package vboxmanage_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
)

// taskLifecycle is one analysis task's VM work as the core drives it with
// a driver that reports lock state: ensure the VM is stopped, restore it,
// start it, stop it, wait until it is off and unlocked, restore it.
func taskLifecycle(ctx context.Context, r *rig) error {
	d := r.drv
	st, err := d.Status(ctx, vmName)
	if err != nil {
		return err
	}
	if !st.Power.IsOff() {
		if err := d.Stop(ctx, vmName, hypervisor.StopPowerOff); err != nil {
			return err
		}
	}
	if err := d.Restore(ctx, vmName, "clean"); err != nil {
		return err
	}
	if err := d.Start(ctx, vmName); err != nil {
		return err
	}
	if err := d.Stop(ctx, vmName, hypervisor.StopPowerOff); err != nil {
		return err
	}
	for {
		st, err := d.Status(ctx, vmName)
		if err != nil {
			return err
		}
		if st.Power.IsOff() && st.Lock == hypervisor.LockUnlocked {
			break
		}
		time.Sleep(50 * time.Millisecond) // the core's poll interval stand-in
	}
	return d.Restore(ctx, vmName, "clean")
}

// The same task with the driver's native cleanup doing both ends.
func taskLifecycleNative(ctx context.Context, r *rig) error {
	d := r.drv
	if _, err := d.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"}); err != nil {
		return err
	}
	if err := d.Start(ctx, vmName); err != nil {
		return err
	}
	_, err := d.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	return err
}

func lifecycleInvocations(t *testing.T, linger time.Duration, task func(context.Context, *rig) error) uint64 {
	t.Helper()
	r := newRig(t, profiles[2], withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(linger) }))
	ctx := ctxFor(t, 30*time.Second)
	_, err := r.drv.Info(ctx) // the one-time version probe is not part of a task
	require.NoError(t, err)
	before := r.native.Invocations()
	logged := len(r.sim.Invocations(t))
	require.NoError(t, task(ctx, r))
	n := r.native.Invocations() - before
	require.Equal(t, int(n), len(r.sim.Invocations(t))-logged, "the driver's count matches the simulator's argv log")
	return n
}

// TestTaskLifecycleInvocations reports the VBoxManage invocations of one
// task on the happy path; the goal is at most 10.
func TestTaskLifecycleInvocations(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		linger time.Duration
		task   func(context.Context, *rig) error
		limit  uint64
	}{
		{"primitives", 0, taskLifecycle, 10},
		{"native cleanup", 0, taskLifecycleNative, 10},
		{"primitives, session lingers 300ms", 300 * time.Millisecond, taskLifecycle, 0},
		{"native cleanup, session lingers 300ms", 300 * time.Millisecond, taskLifecycleNative, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			n := lifecycleInvocations(t, c.linger, c.task)
			t.Logf("task lifecycle (%s): %d VBoxManage invocations", c.name, n)
			if c.limit > 0 {
				require.LessOrEqual(t, n, c.limit)
			}
		})
	}
}

// BenchmarkTaskLifecycle reports invocations per task (the figure the
// issue asks for) and the time one task takes against the simulator.
func BenchmarkTaskLifecycle(b *testing.B) {
	for _, c := range []struct {
		name string
		task func(context.Context, *rig) error
	}{{"primitives", taskLifecycle}, {"native", taskLifecycleNative}} {
		b.Run(c.name, func(b *testing.B) {
			r := newRig(b, profiles[2])
			ctx := context.Background()
			_, err := r.drv.Info(ctx)
			require.NoError(b, err)
			before := r.native.Invocations()
			b.ResetTimer()
			for range b.N {
				if err := c.task(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(r.native.Invocations()-before)/float64(b.N), "invocations/op")
		})
	}
}
