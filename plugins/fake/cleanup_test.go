package fake

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestCleanupBringsEveryVMOffUnlockedAndRestored(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		vm      string
		req     hypervisor.CleanupRequest
		before  hypervisor.StopMethod // a stop sent before the cleanup, if any
		actions []string
		journal []string
	}{
		{
			name: "cleanup of an already clean VM does nothing",
			vm:   "state = \"off\"",
			req:  hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"},
		},
		{
			name: "cleanup of a stopped dirty VM without restore does nothing",
			vm:   "state = \"aborted\"",
		},
		{
			name:    "cleanup of a running VM powers off, waits for the lock and restores",
			vm:      "state = \"running\"",
			req:     hypervisor.CleanupRequest{Restore: true},
			actions: []string{"poweroff", "wait-unlock", "restore clean"},
			journal: []string{"stop poweroff", "restore", "cleanup"},
		},
		{
			name:    "cleanup of a VM that hangs in stopping escalates to an emergency stop",
			vm:      "state = \"running\"\n[vms.a.faults]\nstuck_in_stopping = true",
			actions: []string{"poweroff", "emergency", "wait-unlock"},
			journal: []string{"stop poweroff", "stop emergency", "cleanup"},
		},
		{
			name:    "cleanup of a VM already stuck in stopping kills it at once",
			vm:      "state = \"stopping\"",
			actions: []string{"emergency", "wait-unlock"},
			journal: []string{"stop emergency", "cleanup"},
		},
		{
			name:    "cleanup escalates when power-off fails",
			vm:      "state = \"paused\"\n[vms.a.faults]\npoweroff_failures = 9",
			actions: []string{"poweroff", "emergency", "wait-unlock"},
			journal: []string{"stop poweroff", "stop emergency", "cleanup"},
		},
		{
			name:    "cleanup of a stale lock releases it",
			vm:      "locked = true",
			req:     hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"},
			actions: []string{"unlock"},
			journal: []string{"unlock", "cleanup"},
		},
		{
			name:    "cleanup of a VM left at another snapshot restores the one asked for",
			vm:      "current_snapshot = \"after-install\"",
			req:     hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"},
			actions: []string{"restore clean"},
			journal: []string{"restore", "cleanup"},
		},
		{
			name:    "cleanup of a VM that ACPI is stopping waits for it",
			vm:      "state = \"running\"",
			before:  hypervisor.StopACPI,
			actions: []string{"wait-stop", "wait-unlock"},
			journal: []string{"stop acpi", "cleanup"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The current snapshot defaults to the last one, "clean".
			// Long enough that the cleanup finds the VM still stopping after
			// a stop sent before it, and the lock still held once it is off.
			timing := "[timing]\nacpi_shutdown = \"500ms\"\nunlock_after_stop = \"300ms\"\n"
			d := newFake(t, timing+"[vms.a]\nsnapshots = [\"after-install\", \"clean\"]\n"+tc.vm)
			sent := 0
			if tc.before != "" {
				require.NoError(t, d.Stop(testCtx(t), "a", tc.before))
				sent = 1
			}
			res, err := d.Cleanup(testCtx(t), "a", tc.req)
			require.NoError(t, err)
			assert.Equal(t, tc.actions, actionsOf(res))
			st := status(t, d, "a")
			assert.True(t, st.Power.IsOff(), "power %s", st.Power)
			assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
			if tc.req.Restore {
				assert.Equal(t, "clean", st.CurrentSnapshot)
			}
			ops := journalOps(d)
			if tc.journal == nil {
				assert.Equal(t, []string{"cleanup"}, ops)
			} else {
				assert.Equal(t, tc.journal, ops)
			}
			entries := d.Journal()
			last := entries[len(entries)-1]
			assert.Equal(t, tc.actions, last.Actions)
			for _, e := range entries[sent : len(entries)-1] {
				assert.Equal(t, "cleanup", e.Via, "%+v", e)
			}

			again, err := d.Cleanup(testCtx(t), "a", tc.req)
			require.NoError(t, err)
			assert.Empty(t, again.Steps, "cleaning a clean VM is a no-op (§8.2)")
		})
	}
}

func TestCleanupRestoreOfAVMWithoutSnapshotsIsNotFound(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"")
	_, err := d.Cleanup(testCtx(t), "a", hypervisor.CleanupRequest{Restore: true})
	requireCode(t, err, hypervisor.CodeNotFound, hypervisor.OpCleanup, "a")
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerOff, st.Power, "the stop part was done")
}

func TestCleanupReportsAFailedRestoreAsACleanupFailure(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"aborted\"\nsnapshots = [\"clean\"]\n[vms.a.faults]\nrestore_failures = 1")
	res, err := d.Cleanup(testCtx(t), "a", hypervisor.CleanupRequest{Restore: true})
	e := requireCode(t, err, hypervisor.CodeFailed, hypervisor.OpCleanup, "a")
	assert.Contains(t, e.Message, "Snapshot operation failed")
	assert.Equal(t, []string{"restore clean"}, actionsOf(res))
	entries := d.Journal()
	assert.Equal(t, "failed", entries[len(entries)-1].Outcome)
}

func TestCleanupAnswersTimeoutWhenTheLockOutlastsTheDeadline(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"0s\"\n[vms.a]\nstate = \"running\"\n[vms.a.faults]\nlock_held_after_stop = \"10s\"")
	start := time.Now()
	res, err := d.Cleanup(plugintest.Context(t, 100*time.Millisecond), "a", hypervisor.CleanupRequest{})
	requireCode(t, err, hypervisor.CodeTimeout, hypervisor.OpCleanup, "a")
	assert.Less(t, time.Since(start), time.Second)
	assert.Equal(t, []string{"poweroff", "wait-unlock"}, actionsOf(res))
}

func TestCleanupWaitsForARestoreInProgress(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nrestore = \"150ms\"\n[vms.a]\nsnapshots = [\"clean\"]")
	done := make(chan error, 1)
	go func() { done <- d.Restore(testCtx(t), "a", "clean") }()
	waitStatus(t, d, "a", "restoring", func(st hypervisor.Status) bool { return st.Power == hypervisor.PowerRestoring })
	res, err := d.Cleanup(testCtx(t), "a", hypervisor.CleanupRequest{Restore: true})
	require.NoError(t, err)
	assert.Equal(t, []string{"wait-restore"}, actionsOf(res), "the restore it waited for left the VM clean")
	require.NoError(t, <-done)
}
