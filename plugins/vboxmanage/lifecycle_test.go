package vboxmanage_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
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

// The same task as production runs it: core/lifecycle's Manager, whose
// own status checks (the state each operation begins from, confirmations,
// verification) are VBoxManage invocations too.
func taskLifecycleCore(ctx context.Context, r *rig) error {
	m := lifecycle.New(lifecycle.Options{})
	vm := managedVM(r, vmName)
	for _, op := range []func(context.Context, lifecycle.VM, ...lifecycle.Option) (*lifecycle.OpReport, error){
		m.EnsureStopped, m.Restore, m.Start, m.Stop, m.Restore,
	} {
		if _, err := op(ctx, vm); err != nil {
			return err
		}
	}
	return nil
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
	ctx := testContext(t)
	_, err := r.drv.Info(ctx) // the one-time version probe is not part of a task
	require.NoError(t, err)
	// One task first, so that the one counted starts where a previous
	// task left the VM.
	require.NoError(t, task(ctx, r))
	before := r.native.Invocations()
	logged := len(r.sim.Invocations(t))
	require.NoError(t, task(ctx, r))
	n := r.native.Invocations() - before
	require.Equal(t, int(n), len(r.sim.Invocations(t))-logged, "the driver's count matches the simulator's argv log")
	return n
}

// TestTaskLifecycleInvocations reports the VBoxManage invocations of one
// task on the happy path; the goal for the driver's share is at most 10.
// Through the core the task costs more: every status the core reads is a
// `list --long vms`.
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
		{"core/lifecycle", 0, taskLifecycleCore, 0},
		{"core/lifecycle, session lingers 300ms", 300 * time.Millisecond, taskLifecycleCore, 0},
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

// BenchmarkTaskLifecycle reports the VBoxManage invocations of one task
// (ensure stopped, restore, start, stop, restore) on the happy path, and
// the time one task takes against the simulator: driven with the
// driver's primitives as the core composes them, with its native cleanup,
// and through core/lifecycle as in production.
func BenchmarkTaskLifecycle(b *testing.B) {
	for _, c := range []struct {
		name string
		task func(context.Context, *rig) error
	}{{"primitives", taskLifecycle}, {"native", taskLifecycleNative}, {"core", taskLifecycleCore}} {
		b.Run(c.name, func(b *testing.B) {
			r := newRig(b, profiles[2])
			ctx := context.Background()
			_, err := r.drv.Info(ctx)
			require.NoError(b, err)
			require.NoError(b, c.task(ctx, r)) // from the state a previous task leaves
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

// managedVM is vm as core/lifecycle addresses it in production: through
// the plugin, with the default settings but the snapshot to return to.
func managedVM(r *rig, name string, adjust ...func(*config.Lifecycle)) lifecycle.VM {
	s := config.DefaultLifecycle()
	s.Snapshot = "clean"
	for _, f := range adjust {
		f(&s)
	}
	return lifecycle.VM{Name: name, Plugin: "vbox", Driver: r.drv, Settings: s}
}

// stepNames lists a report's steps with their outcomes.
func stepNames(rep *lifecycle.OpReport) []string {
	var out []string
	for _, s := range rep.Steps {
		out = append(out, s.Name+": "+s.Outcome)
	}
	return out
}
