package lifecycle_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// Fast timings: every transition well under a second.
const timing = `
[plugins.fake.config.timing]
start = "50ms"
acpi_shutdown = "150ms"
poweroff = "100ms"
emergency = "20ms"
restore = "50ms"
unlock_after_stop = "100ms"
`

// withoutNativeCleanup declares every capability but cleanup, so that the
// core composes the cleanup itself.
const withoutNativeCleanup = `capabilities = ["list", "stop.acpi", "stop.poweroff", "stop.emergency", "unlock",
  "snapshot.restore", "status.lock", "watch"]
`

func stepNames(r *lifecycle.OpReport) []string {
	var out []string
	for _, s := range r.Steps {
		out = append(out, s.Name+": "+s.Outcome)
	}
	return out
}

func finalIsClean(t *testing.T, r *lifecycle.OpReport, snapshot string) {
	t.Helper()
	require.NotNil(t, r.Final)
	assert.True(t, r.Final.Power.IsOff(), "final power %s", r.Final.Power)
	assert.Equal(t, hypervisor.LockUnlocked, r.Final.Lock)
	assert.Equal(t, snapshot, r.Final.CurrentSnapshot)
}

func TestCleanupOfARunningVM(t *testing.T) {
	t.Run("composed ladder", func(t *testing.T) {
		w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
		r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
		require.NoError(t, err)
		assert.Equal(t, lifecycle.PathComposed, r.Path)
		assert.Equal(t, []string{"stop acpi: off", "wait for release: unlocked", "restore clean (current): done", "verify: ok"}, stepNames(r))
		finalIsClean(t, r, "clean")
		assert.Equal(t, []string{"stop acpi", "restore"}, w.sent())
		assert.Empty(t, r.Fallbacks)
		assert.Less(t, r.StatusCalls, 10, "state changes come from the watch, not from polling")
	})
	t.Run("native cleanup verified by status", func(t *testing.T) {
		w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
		r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
		require.NoError(t, err)
		assert.Equal(t, lifecycle.PathNative, r.Path)
		assert.Equal(t, []string{"driver: poweroff: done", "driver: wait-unlock: done", "driver: restore clean: done",
			"native cleanup: done", "verify: ok"}, stepNames(r))
		assert.GreaterOrEqual(t, r.Steps[0].Duration, 90*time.Millisecond, "the driver's step durations reach the report")
		finalIsClean(t, r, "clean")
	})
}

func TestCleanupOfAVMStuckInStopping(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "stopping"
snapshots = ["clean"]
`)
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	assert.Equal(t, []string{"stop acpi: skipped", "stop poweroff: refused", "stop emergency: off",
		"wait for release: unlocked", "restore clean (current): done", "verify: ok"}, stepNames(r))
	assert.Contains(t, r.Steps[1].Detail, "Stopping", "the hypervisor's refusal is kept")
	finalIsClean(t, r, "clean")
}

func TestCleanupOfAStoppedVMSendsNoStopCommand(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "off"
snapshots = ["clean"]
`)
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	assert.Equal(t, "stop: already off", stepNames(r)[0])
	assert.Equal(t, []string{"restore"}, w.sent(), "no stop command reached the hypervisor")
	finalIsClean(t, r, "clean")
}

func TestCleanupThatTimesOutReturnsInTimeAndQuarantines(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
acpi_ignored = true
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) {
		s.StopLadder = []string{config.StopACPI}
		s.ACPITimeout = 30 * time.Second
		s.CleanupTimeout = 400 * time.Millisecond
	})
	// The plugin is launched first: its launch on a busy machine is no
	// part of what the cleanup's deadline is about.
	_, err := vm.Driver.Info(plugintest.Context(t, 30*time.Second))
	require.NoError(t, err)
	begun := time.Now()
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), vm)
	took := time.Since(begun)
	require.Error(t, err)
	assert.Less(t, took, 400*time.Millisecond+250*time.Millisecond, "returns within its deadline plus a small margin")
	assert.GreaterOrEqual(t, took, 400*time.Millisecond)
	assert.ErrorIs(t, err, hypervisor.ErrTimeout)
	var stuck *lifecycle.StuckError
	require.ErrorAs(t, err, &stuck)
	assert.Equal(t, "vm1", stuck.VM)
	assert.Equal(t, []string{"acpi"}, stuck.Tried)
	assert.True(t, r.Quarantined)
	_, err = w.manager.EnsureStopped(plugintest.Context(t, 5*time.Second), vm)
	assert.ErrorIs(t, err, lifecycle.ErrQuarantined, "a quarantined VM is not used again")
}

func TestEscalationWhenACPIIsIgnored(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
acpi_ignored = true
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.ACPITimeout = 300 * time.Millisecond })
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	names := stepNames(r)
	assert.Equal(t, []string{"stop acpi: deadline passed", "stop poweroff: off"}, names[:2])
	assert.InDelta(t, 300*time.Millisecond, r.Steps[0].Duration, float64(150*time.Millisecond))
	assert.Equal(t, []string{"stop acpi", "stop poweroff", "restore"}, w.sent())
	finalIsClean(t, r, "clean")
}

func TestEscalationWhenPowerOffFails(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
poweroff_failures = 100
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) {
		s.StopLadder = []string{config.StopPowerOff, config.StopEmergency}
	})
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, []string{"stop poweroff: failed", "stop emergency: off"}, stepNames(r)[:2])
	assert.Equal(t, []string{"stop poweroff (failed)", "stop emergency", "restore"}, w.sent())
	finalIsClean(t, r, "clean")
}

func TestSessionLockedAfterStopIsWaitedOutThenRestoreSucceeds(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
lock_held_after_stop = "3s"
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) {
		s.StopLadder = []string{config.StopPowerOff}
	})
	r, err := w.manager.Restore(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, []string{"stop poweroff: off", "wait for release: unlocked", "restore clean (current): done", "verify: ok"}, stepNames(r))
	assert.InDelta(t, 3*time.Second, r.Steps[1].Duration, float64(300*time.Millisecond), "the lock was held 3s")
	assert.Equal(t, 1, r.Steps[2].Attempts, "the restore went in once the session was free")
	assert.Equal(t, []string{"stop poweroff", "restore"}, w.sent(), "no restore bounced off the lock")
	finalIsClean(t, r, "clean")
}

func TestSessionLockedAfterStopThroughAV1Plugin(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
lock_held_after_stop = "3s"
`, "--max-protocol=1")
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	assert.Equal(t, lifecycle.PathLegacy, r.Path)
	assert.Equal(t, []string{"stop acpi: skipped", "stop poweroff: off", "settle (legacy): done",
		"restore clean (current): done", "verify: ok"}, stepNames(r))
	assert.Greater(t, r.Steps[3].Attempts, 1, "without lock reporting the restore is retried while the session is held")
	assert.Contains(t, r.Fallbacks, "the driver has no stop.acpi; rung \"acpi\" skipped")
	assert.Contains(t, r.Fallbacks[1], "cannot report session locks")
	require.NotNil(t, r.Final)
	assert.Equal(t, hypervisor.PowerOff, r.Final.Power)
	assert.Equal(t, hypervisor.LockUnknown, r.Final.Lock)
	assert.Equal(t, "clean", r.Final.CurrentSnapshot)
	assert.Contains(t, w.sent(), "restore (locked)", "the hypervisor did say locked, and the core retried")
	assert.Equal(t, "restore", w.sent()[len(w.sent())-1])
}

func TestCleanupAfterAFailedTaskKeepsTheTaskFailure(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.good]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.bad]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.bad.faults]
restore_failures = 100
`)
	taskErr := errors.New("scan crashed: exit status 139")
	r, err := w.manager.CleanupAfter(plugintest.Context(t, 30*time.Second), w.vm("good"), taskErr)
	assert.Same(t, taskErr, err, "a successful cleanup keeps the task's failure")
	assert.Empty(t, r.Error)
	finalIsClean(t, r, "clean")

	r, err = w.manager.CleanupAfter(plugintest.Context(t, 30*time.Second), w.vm("bad"), taskErr)
	assert.Same(t, taskErr, err, "a failed cleanup does not replace the task's failure")
	assert.True(t, r.Quarantined)
	assert.NotEmpty(t, r.Error)

	r, err = w.manager.CleanupAfter(plugintest.Context(t, 30*time.Second), w.vm("good"), nil)
	assert.NoError(t, err, "a task that succeeded stays a success")
	assert.False(t, r.Quarantined)
}

func TestCleanupFailureQuarantinesUntilACleanupSucceeds(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
restore_failures = 2
`)
	vm := w.vm("vm1")
	ctx := plugintest.Context(t, 60*time.Second)
	for i := range 2 {
		r, err := w.manager.Cleanup(ctx, vm)
		require.Error(t, err, "cleanup %d", i)
		assert.True(t, r.Quarantined)
		var qe *lifecycle.QuarantineError
		require.ErrorAs(t, w.manager.CheckUsable(ctx, vm), &qe)
		assert.Contains(t, qe.Reason, "restore")
		assert.Contains(t, qe.Error(), "sandbox vm cleanup vm1", "says how to bring it back")
	}
	_, err := w.manager.EnsureStopped(ctx, vm)
	require.ErrorIs(t, err, lifecycle.ErrQuarantined)

	r, err := w.manager.Cleanup(ctx, vm)
	require.NoError(t, err, "the operator's cleanup succeeds once the fault is gone")
	assert.False(t, r.Quarantined)
	assert.NoError(t, w.manager.CheckUsable(ctx, vm))
	_, err = w.manager.EnsureStopped(ctx, vm)
	assert.NoError(t, err)
	assert.Contains(t, w.log.String(), "quarantine lifted")
}

func TestEnsureStoppedAndRestoreTakeTheEnhancedPathWhenAvailable(t *testing.T) {
	vms := `
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`
	t.Run("ensure stopped, native cleanup", func(t *testing.T) {
		w := fakeWorld(t, timing+vms)
		r, err := w.manager.EnsureStopped(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
		require.NoError(t, err)
		assert.Equal(t, lifecycle.PathNative, r.Path)
		assert.Equal(t, []string{"stop poweroff", "cleanup"}, w.sent(), "one native cleanup, no restore asked")
		assert.True(t, r.Final.Power.IsOff())
		assert.Equal(t, hypervisor.LockUnlocked, r.Final.Lock)
	})
	t.Run("ensure stopped of a clean VM asks the driver nothing", func(t *testing.T) {
		w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "off"
snapshots = ["clean"]
`)
		r, err := w.manager.EnsureStopped(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
		require.NoError(t, err)
		assert.Equal(t, []string{"stop: already off"}, stepNames(r))
		assert.Empty(t, w.sent(), "not even a native cleanup")
		assert.Equal(t, 1, r.StatusCalls)
	})
	t.Run("ensure stopped, legacy power-off and wait", func(t *testing.T) {
		w := fakeWorld(t, timing+vms, "--max-protocol=1")
		r, err := w.manager.EnsureStopped(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
		require.NoError(t, err)
		assert.Equal(t, lifecycle.PathLegacy, r.Path)
		assert.Equal(t, []string{"stop acpi: skipped", "stop poweroff: off", "settle (legacy): done"}, stepNames(r))
		assert.Equal(t, []string{"stop poweroff"}, w.sent())
		assert.True(t, r.Final.Power.IsOff(), "same outcome: off")
	})
	t.Run("restore, composed with lock confirmation", func(t *testing.T) {
		w := fakeWorld(t, timing+vms)
		r, err := w.manager.Restore(plugintest.Context(t, 30*time.Second), w.vm("vm1", func(s *config.Lifecycle) {
			s.StopLadder = []string{config.StopPowerOff}
		}))
		require.NoError(t, err)
		assert.Equal(t, lifecycle.PathComposed, r.Path)
		assert.Equal(t, []string{"stop poweroff: off", "wait for release: unlocked", "restore clean (current): done", "verify: ok"}, stepNames(r))
		finalIsClean(t, r, "clean")
	})
	t.Run("restore, legacy", func(t *testing.T) {
		w := fakeWorld(t, timing+vms, "--max-protocol=1")
		r, err := w.manager.Restore(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
		require.NoError(t, err)
		assert.Equal(t, lifecycle.PathLegacy, r.Path)
		assert.Equal(t, []string{"stop acpi: skipped", "stop poweroff: off", "settle (legacy): done",
			"restore clean (current): done", "verify: ok"}, stepNames(r))
		assert.Equal(t, "clean", r.Final.CurrentSnapshot)
	})
}

func TestConcurrentCleanupsOfOneVMAreSerializedAndOfTwoVMsOverlap(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+`
[plugins.fake.config.timing]
poweroff = "400ms"
unlock_after_stop = "0s"
restore = "0s"
[plugins.fake.config.vms.a]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.b]
state = "running"
snapshots = ["clean"]
`)
	ladder := func(s *config.Lifecycle) { s.StopLadder = []string{config.StopPowerOff} }
	run := func(vms ...lifecycle.VM) []*lifecycle.OpReport {
		reports := make([]*lifecycle.OpReport, len(vms))
		var wg sync.WaitGroup
		for i, vm := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), vm)
				assert.NoError(t, err)
				reports[i] = r
			}()
		}
		wg.Wait()
		return reports
	}
	overlap := func(a, b *lifecycle.OpReport) bool {
		return a.Started.Before(b.Started.Add(b.Duration)) && b.Started.Before(a.Started.Add(a.Duration))
	}

	same := run(w.vm("a", ladder), w.vm("a", ladder))
	assert.False(t, overlap(same[0], same[1]), "two cleanups of one VM never run at once")
	first, second := same[0], same[1]
	if second.Started.Before(first.Started) {
		first, second = second, first
	}
	assert.Equal(t, "stop poweroff: off", stepNames(first)[0])
	assert.Equal(t, "stop: already off", stepNames(second)[0], "the second found the first one's work done")

	_, err := w.manager.Start(plugintest.Context(t, 5*time.Second), w.vm("a"))
	require.NoError(t, err)
	both := run(w.vm("a", ladder), w.vm("b", ladder))
	assert.True(t, overlap(both[0], both[1]), "cleanups of different VMs run in parallel")
	assert.Equal(t, "stop poweroff: off", stepNames(both[0])[0], "a was starting; the power-off waited for it")
}

func TestStopWithOneMethodAndUnlock(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
stale_lock_after_stop = true
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.ReleaseTimeout = 300 * time.Millisecond })
	r, err := w.manager.Stop(plugintest.Context(t, 30*time.Second), vm, lifecycle.WithMethod(hypervisor.StopEmergency))
	require.NoError(t, err)
	assert.Equal(t, []string{"stop emergency: off", "wait for release: deadline passed", "unlock: unlocked"}, stepNames(r))
	assert.Equal(t, hypervisor.PowerAborted, r.Final.Power)
	assert.Equal(t, hypervisor.LockUnlocked, r.Final.Lock)

	r, err = w.manager.Unlock(plugintest.Context(t, 5*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, []string{"unlock: already unlocked"}, stepNames(r))

	_, err = w.manager.Start(plugintest.Context(t, 5*time.Second), vm)
	require.NoError(t, err)
	_, err = w.manager.Unlock(plugintest.Context(t, 5*time.Second), vm)
	assert.ErrorIs(t, err, hypervisor.ErrInvalidState, "a running VM is stopped, not unlocked")
}

func TestPollingWhenTheDriverCannotWatch(t *testing.T) {
	w := fakeWorld(t, `capabilities = ["stop.poweroff", "snapshot.restore", "status.lock"]
[plugins.fake.config.timing]
poweroff = "1s"
unlock_after_stop = "0s"
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.PollMaxInterval = 200 * time.Millisecond })
	r, err := w.manager.Stop(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, []string{"stop acpi: skipped", "stop poweroff: off"}, stepNames(r))
	assert.InDelta(t, time.Second, r.Steps[1].Duration, float64(250*time.Millisecond), "never later than the poll ceiling")
	assert.Less(t, r.StatusCalls, 16, "adaptive polling, not a busy loop")
	t.Logf("status calls for a 1s power-off: %d", r.StatusCalls)
}

func TestCleanupLogsWhatAnOperatorNeeds(t *testing.T) {
	w := fakeWorld(t, withoutNativeCleanup+timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	_, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	log := w.log.String()
	for _, want := range []string{"cleanup started", "state found", "power=running", "stop acpi", "outcome=off",
		"wait for release", "restore clean (current)", "cleanup done", "took=", "vm=vm1", "plugin=fake"} {
		assert.Contains(t, log, want)
	}
}

// failingLeases cannot take any lease, like a lease file the user may not
// open.
type failingLeases struct{}

func (failingLeases) Acquire(context.Context, string) (func(), error) {
	return nil, errors.New("open leases/fake%2Fvm1.lock: permission denied")
}

// heldLeases holds every lease until the test ends.
type heldLeases struct{}

func (heldLeases) Acquire(ctx context.Context, _ string) (func(), error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestALeaseThatCannotBeTakenStopsTheOperation(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	m := lifecycle.New(lifecycle.Options{Leases: failingLeases{}})
	r, err := m.Cleanup(plugintest.Context(t, 10*time.Second), w.vm("vm1"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "could not take the VM's lease")
	assert.Contains(t, err.Error(), "permission denied")
	assert.False(t, r.Quarantined, "nothing was done to the VM")
	assert.Empty(t, w.sent(), "no command without the lease")
	_, err = m.Start(plugintest.Context(t, 10*time.Second), w.vm("vm1"))
	assert.Error(t, err, "not even a start runs without the lease")
}

func TestCleanupTimeoutCoversTheWaitForAnotherOperation(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
snapshots = ["clean"]
`)
	m := lifecycle.New(lifecycle.Options{Leases: heldLeases{}})
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.CleanupTimeout = 300 * time.Millisecond })
	begun := time.Now()
	r, err := m.Cleanup(context.Background(), vm)
	assert.Less(t, time.Since(begun), time.Second)
	assert.ErrorIs(t, err, hypervisor.ErrTimeout)
	assert.Contains(t, err.Error(), "another operation on this VM")
	assert.False(t, r.Quarantined, "a VM someone else is working on is not quarantined for it")
	assert.NoError(t, m.CheckUsable(context.Background(), vm))
}

func TestCleanupOfAnUnknownVMQuarantinesNothing(t *testing.T) {
	w := fakeWorld(t, timing)
	vm := w.vm("no-such-vm")
	r, err := w.manager.Cleanup(plugintest.Context(t, 10*time.Second), vm)
	assert.ErrorIs(t, err, hypervisor.ErrNotFound)
	assert.False(t, r.Quarantined)
	assert.NoError(t, w.manager.CheckUsable(context.Background(), vm))
}

func TestUnlockByEmergencyStopWhenTheDriverCannotUnlock(t *testing.T) {
	w := fakeWorld(t, `capabilities = ["stop.poweroff", "stop.emergency", "snapshot.restore", "status.lock", "watch"]
[plugins.fake.config.timing]
poweroff = "50ms"
emergency = "20ms"
unlock_after_stop = "1h"
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.ReleaseTimeout = 200 * time.Millisecond })
	r, err := w.manager.Stop(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, []string{"stop acpi: skipped", "stop poweroff: off", "wait for release: deadline passed",
		"unlock by emergency stop: unlocked"}, stepNames(r))
	assert.Equal(t, hypervisor.LockUnlocked, r.Final.Lock)
	assert.Equal(t, []string{"stop poweroff", "stop emergency"}, w.sent(), "the emergency stop killed the lingering VM process")
}

func TestWaitingLongerForReleaseWhenTheDriverCanNeitherUnlockNorKill(t *testing.T) {
	w := fakeWorld(t, `capabilities = ["stop.poweroff", "snapshot.restore", "status.lock", "watch"]
[plugins.fake.config.timing]
poweroff = "50ms"
unlock_after_stop = "600ms"
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) {
		s.ReleaseTimeout = 200 * time.Millisecond
		s.UnlockTimeout = 5 * time.Second
	})
	r, err := w.manager.Stop(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, "wait longer for release: unlocked", stepNames(r)[3])
	assert.Contains(t, r.Fallbacks[len(r.Fallbacks)-1], "neither unlock nor stop.emergency")

	vm.Settings.UnlockTimeout = 300 * time.Millisecond
	w2 := fakeWorld(t, `capabilities = ["stop.poweroff", "snapshot.restore", "status.lock", "watch"]
[plugins.fake.config.timing]
poweroff = "50ms"
unlock_after_stop = "1h"
[plugins.fake.config.vms.vm1]
state = "running"
`)
	vm.Driver = w2.plugin
	_, err = w2.manager.Stop(plugintest.Context(t, 30*time.Second), vm)
	var stuck *lifecycle.StuckError
	require.ErrorAs(t, err, &stuck)
	assert.Equal(t, "unlocked", stuck.Want)
	assert.Contains(t, err.Error(), "wait longer for release")
	assert.ErrorIs(t, err, hypervisor.ErrTimeout)
}

func TestLegacySettleFollowsOnlyAStop(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "off"
snapshots = ["clean"]
`, "--max-protocol=1")
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	assert.Equal(t, []string{"stop: already off", "restore clean (current): done", "verify: ok"}, stepNames(r),
		"no stop, no settle delay")
	r, err = w.manager.EnsureStopped(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	assert.Less(t, r.Duration, time.Second)
}

func TestStatusFailuresGiveUpAfterStatusTimeout(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
[plugins.fake.config.vms.vm1.faults]
status_failures = 1000000
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.StatusTimeout = 300 * time.Millisecond })
	_, err := vm.Driver.Info(plugintest.Context(t, 30*time.Second)) // launched first: a slow launch is not the point
	require.NoError(t, err)
	begun := time.Now()
	r, err := w.manager.Cleanup(context.Background(), vm)
	assert.Less(t, time.Since(begun), 2*time.Second, "a hypervisor that never answers does not hang the cleanup")
	assert.ErrorIs(t, err, hypervisor.ErrUnavailable)
	assert.False(t, r.Quarantined, "nothing was done to the VM")
}

func TestNativeCleanupCanBeTurnedOff(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) {
		s.NativeCleanup = false
		s.StopLadder = []string{config.StopPowerOff}
	})
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.Equal(t, lifecycle.PathComposed, r.Path)
	assert.Equal(t, "stop poweroff: off", stepNames(r)[0], "the VM's own ladder, not the driver's choice")
}

func TestAFailedNativeCleanupReportsTheDriversSteps(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
restore_failures = 1
`)
	r, err := w.manager.Cleanup(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err, "the composed cleanup finished what the native one could not")
	names := stepNames(r)
	assert.Equal(t, []string{"driver: poweroff: done", "driver: wait-unlock: done", "driver: restore clean: failed",
		"native cleanup: failed"}, names[:4], "what the driver did before it failed crossed the wire")
	assert.Equal(t, "off/unlocked", r.Steps[3].State, "the state the driver left, read afresh")
	assert.Contains(t, r.Fallbacks[0], "native cleanup failed")
}

func TestAStopThatCannotRunSaysWhy(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "paused"
`)
	_, err := w.manager.Stop(plugintest.Context(t, 10*time.Second), w.vm("vm1"), lifecycle.WithMethod(hypervisor.StopACPI))
	require.Error(t, err)
	assert.ErrorIs(t, err, hypervisor.ErrInvalidState)
	assert.Contains(t, err.Error(), "acpi (skipped: a paused guest cannot answer the power button)")
	assert.Empty(t, w.sent())
}

// A snapshot that does not exist (a typo in config.toml) fails the cleanup
// after the VM was already powered off: the VM is dirty and must leave
// service, though the error is "not found" as for a VM that does not exist.
func TestACleanupToASnapshotThatDoesNotExistQuarantines(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	ctx := plugintest.Context(t, 30*time.Second)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.Snapshot = "cleen" })
	r, err := w.manager.Cleanup(ctx, vm)
	require.Error(t, err)
	assert.True(t, hypervisor.IsNotFound(err), "%v", err)
	assert.True(t, r.Quarantined, "a VM left dirty by a failed cleanup is quarantined")
	assert.ErrorIs(t, w.manager.CheckUsable(ctx, vm), lifecycle.ErrQuarantined)
}

// brokenQuarantine cannot be read (a damaged file) or written (a read-only
// state directory).
type brokenQuarantine struct{ read, write error }

func (q brokenQuarantine) Mark(context.Context, string, string) error { return q.write }
func (q brokenQuarantine) Clear(context.Context, string) error        { return q.write }
func (q brokenQuarantine) Get(context.Context, string) (lifecycle.QuarantineEntry, bool, error) {
	return lifecycle.QuarantineEntry{}, false, q.read
}

// A quarantine that cannot be read or recorded is an error the operator
// sees: never a cleanup that looks fine while the VM's standing is unknown.
func TestAQuarantineThatCannotBeReadOrRecordedFailsTheCleanup(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
snapshots = ["clean"]
[plugins.fake.config.vms.vm2]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm2.faults]
restore_failures = 9
`)
	ctx := plugintest.Context(t, 30*time.Second)
	damaged := errors.New("state/quarantine.json is damaged (unexpected end of JSON input); fix or delete it")
	m := lifecycle.New(lifecycle.Options{Quarantine: brokenQuarantine{read: damaged}})
	r, err := m.Cleanup(ctx, w.vm("vm1"))
	require.Error(t, err, "the cleanup itself succeeded, but whether the VM may be used is unknown")
	assert.Contains(t, err.Error(), "quarantine.json is damaged")
	assert.Contains(t, r.Error, "quarantine.json is damaged")

	readOnly := errors.New("open state/quarantine-1.json: read-only file system")
	m = lifecycle.New(lifecycle.Options{Quarantine: brokenQuarantine{write: readOnly}})
	r, err = m.Cleanup(ctx, w.vm("vm2"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "restore", "the cleanup's own failure comes first")
	assert.Contains(t, err.Error(), "could not be quarantined")
	assert.Contains(t, err.Error(), "read-only file system")
	assert.False(t, r.Quarantined)
}

// An operation cut short (Ctrl-C) reports the state the VM is in when it
// gives up, read afresh, not the last one its waiting happened to see.
func TestAnInterruptedOperationReportsTheStateItLeft(t *testing.T) {
	w := fakeWorld(t, `capabilities = ["stop.poweroff", "snapshot.restore", "status.lock"]
[plugins.fake.config.timing]
poweroff = "100ms"
unlock_after_stop = "0s"
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) {
		s.PollInterval, s.PollMaxInterval = 10*time.Second, 10*time.Second // one poll, then a long wait
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var once sync.Once
	r, err := w.manager.Stop(ctx, vm, lifecycle.WithProgress(func(p lifecycle.Progress) {
		if p.State.Power == hypervisor.PowerStopping {
			once.Do(func() { time.AfterFunc(500*time.Millisecond, cancel) })
		}
	}))
	require.Error(t, err)
	require.NotNil(t, r.Final)
	assert.Equal(t, hypervisor.PowerOff, r.Final.Power, "the power-off finished while the stop waited; the report must say so")
}
