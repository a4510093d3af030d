package lifecycle_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// Reconciliation finds what an earlier run that crashed left behind: a VM
// running, paused, saved or with its session held, with nobody holding its
// lease. It cleans such a VM and says so; a clean VM is left alone.
func TestReconcileCleansWhatACrashLeftBehind(t *testing.T) {
	for _, tc := range []struct {
		name, vm, found string
	}{
		{"running", "state = \"running\"", "left running"},
		{"paused", "state = \"paused\"", "left paused"},
		{"saved off its snapshot", "state = \"saved\"", "left saved"},
		{"locked", "locked = true", "left locked"},
		{"on another snapshot", "current_snapshot = \"dirty\"", "left on snapshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
snapshots = ["clean", "dirty"]
`+tc.vm+"\n")
			vm := w.vm("vm1", func(s *config.Lifecycle) { s.Snapshot = "clean" })
			r, err := w.manager.Reconcile(plugintest.Context(t, 30*time.Second), vm)
			require.NoError(t, err, "%v", stepNames(r))
			assert.Equal(t, "reconcile", r.Operation)
			assert.True(t, r.Reconciled, "the report says the VM was cleaned")
			require.NotEmpty(t, r.Steps)
			assert.Contains(t, r.Steps[0].Name+": "+r.Steps[0].Outcome, "check: "+tc.found)
			finalIsClean(t, r, "clean")
			assert.NotEmpty(t, w.sent(), "the VM was worked on")
		})
	}
}

func TestReconcileLeavesACleanVMAlone(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.Snapshot = "clean" })
	r, err := w.manager.Reconcile(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.False(t, r.Reconciled)
	assert.Equal(t, []string{"check: clean"}, stepNames(r))
	assert.Empty(t, w.sent(), "nothing reaches a VM that is off, unlocked and on its snapshot")
	assert.Equal(t, 1, r.StatusCalls)
}

// A VM saved at its snapshot is at rest (§7.5): that is what the restore of
// a snapshot taken while running leaves, so every task on such a VM would
// otherwise be told its VM was left behind.
func TestReconcileLeavesAVMSavedAtItsSnapshotAlone(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "saved"
snapshots = ["clean"]
online_snapshots = ["clean"]
`)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.Snapshot = "clean" })
	r, err := w.manager.Reconcile(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.False(t, r.Reconciled, "a VM at rest was not left behind")
	assert.Equal(t, []string{"check: clean"}, stepNames(r))
	assert.Contains(t, r.Steps[0].Detail, "saved at its snapshot")
	assert.Empty(t, w.sent(), "nothing reaches a VM at rest")

	// Saved at its snapshot but with restores off, the saved state is not
	// known to be the snapshot's: it was left behind.
	vm = w.vm("vm1", func(s *config.Lifecycle) { s.Snapshot, s.RestoreOnCleanup = "clean", false })
	r, err = w.manager.Reconcile(plugintest.Context(t, 30*time.Second), vm)
	require.NoError(t, err)
	assert.True(t, r.Reconciled)
}

// A VM whose lease another operation holds is in use, not left behind:
// reconciliation neither waits for it nor touches it.
func TestReconcileLeavesAVMInUseAlone(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	ctx := plugintest.Context(t, 30*time.Second)
	vm := w.vm("vm1")
	lease, err := w.manager.Lease(ctx, vm)
	require.NoError(t, err)
	defer lease.Release()
	start := time.Now()
	r, err := w.manager.Reconcile(ctx, vm)
	require.Error(t, err)
	assert.ErrorIs(t, err, lifecycle.ErrLeaseHeld)
	assert.Less(t, time.Since(start), time.Second, "it does not wait for the holder")
	assert.Contains(t, r.Error, "in use")
	assert.Empty(t, w.sent())

	// The holder itself reconciles under its lease.
	r, err = lease.Reconcile(ctx)
	require.NoError(t, err)
	assert.True(t, r.Reconciled)
	finalIsClean(t, r, "clean")
}

// leftLeases reports that a holder died holding every lease it hands out.
type leftLeases struct {
	lifecycle.Leases
	left lifecycle.LeaseHolder
}

func (l leftLeases) TryAcquire(key string) (func(), *lifecycle.LeaseHolder, error) {
	release, err := l.Acquire(context.Background(), key)
	left := l.left
	return release, &left, err
}

// A holder that died holding the lease was in the middle of something: the
// VM is cleaned even if it looks clean (a guest's disk is not in its
// status), and the report names the holder.
func TestReconcileCleansAVMWhoseHolderDied(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
snapshots = ["clean"]
`)
	dead := lifecycle.LeaseHolder{Key: "fake/vm1", PID: 4242, Command: "sandbox run sample.exe", Since: time.Now().Add(-time.Hour)}
	m := lifecycle.New(lifecycle.Options{Leases: leftLeases{Leases: lifecycle.NewLocalLeases(), left: dead}})
	r, err := m.Reconcile(plugintest.Context(t, 30*time.Second), w.vm("vm1"))
	require.NoError(t, err)
	assert.True(t, r.Reconciled)
	require.NotNil(t, r.LeftBy)
	assert.Equal(t, 4242, r.LeftBy.PID)
	assert.Contains(t, r.Steps[0].Detail, "pid 4242 (sandbox run sample.exe)")
	assert.Equal(t, []string{"cleanup"}, w.sent(), "cleaned (restored) though it looked clean")
}

func TestReconcileRefusesAQuarantinedVM(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	ctx := plugintest.Context(t, 30*time.Second)
	q := lifecycle.NewMemoryQuarantine()
	require.NoError(t, q.Mark(ctx, "fake/vm1", "restore failed"))
	m := lifecycle.New(lifecycle.Options{Quarantine: q})
	r, err := m.Reconcile(ctx, w.vm("vm1"))
	assert.ErrorIs(t, err, lifecycle.ErrQuarantined, "an operator brings a quarantined VM back, not a reconciliation")
	assert.Contains(t, r.Error, "restore failed")
	assert.Empty(t, w.sent())
}

// A reconciliation that fails quarantines the VM, as a cleanup does.
func TestAFailedReconciliationQuarantines(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.vm1.faults]
restore_failures = 99
`)
	ctx := plugintest.Context(t, 30*time.Second)
	vm := w.vm("vm1", func(s *config.Lifecycle) { s.RestoreTimeout = time.Second })
	r, err := w.manager.Reconcile(ctx, vm)
	require.Error(t, err)
	assert.True(t, r.Quarantined)
	assert.ErrorIs(t, w.manager.CheckUsable(ctx, vm), lifecycle.ErrQuarantined)
}

// OnlyAbandoned, as a service starting again reconciles its VMs: a VM
// whose lease holder died is cleaned, one merely found running is left to
// its next user's check, untouched.
func TestReconcileOnlyAbandonedTouchesOnlyWhatADeadHolderLeft(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	ctx := plugintest.Context(t, 30*time.Second)
	r, err := w.manager.Reconcile(ctx, w.vm("vm1"), lifecycle.OnlyAbandoned())
	require.NoError(t, err)
	assert.False(t, r.Reconciled)
	assert.Equal(t, []string{"check: skipped"}, stepNames(r))
	assert.Empty(t, w.sent(), "a running VM nobody died holding is not touched")
	assert.Zero(t, r.StatusCalls)

	dead := lifecycle.LeaseHolder{Key: "fake/vm1", PID: 4242, Command: "sandbox serve", Since: time.Now().Add(-time.Hour)}
	m := lifecycle.New(lifecycle.Options{Leases: leftLeases{Leases: lifecycle.NewLocalLeases(), left: dead}})
	r, err = m.Reconcile(ctx, w.vm("vm1"), lifecycle.OnlyAbandoned())
	require.NoError(t, err)
	assert.True(t, r.Reconciled)
	require.NotNil(t, r.LeftBy)
	assert.Equal(t, 4242, r.LeftBy.PID)
	finalIsClean(t, r, "clean")
}
