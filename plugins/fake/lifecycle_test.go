package fake

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestInitialStatesAreReportedWithVirtualBoxWords(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		state  string
		locked bool
		power  hypervisor.PowerState
		raw    string
		lock   hypervisor.LockState
	}{
		{"off", false, hypervisor.PowerOff, "poweroff", hypervisor.LockUnlocked},
		{"off", true, hypervisor.PowerOff, "poweroff", hypervisor.LockLocked},
		{"saved", false, hypervisor.PowerSaved, "saved", hypervisor.LockUnlocked},
		{"aborted", true, hypervisor.PowerAborted, "aborted", hypervisor.LockLocked},
		{"running", false, hypervisor.PowerRunning, "running", hypervisor.LockLocked},
		{"paused", false, hypervisor.PowerPaused, "paused", hypervisor.LockLocked},
		{"stopping", false, hypervisor.PowerStopping, "stopping", hypervisor.LockLocked},
		{"stuck", false, hypervisor.PowerStuck, "gurumeditation", hypervisor.LockLocked},
	} {
		name := tc.state
		if tc.locked {
			name += " and locked"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			locked := ""
			if tc.locked {
				locked = "locked = true"
			}
			d := newFake(t, "[vms.a]\nstate = \""+tc.state+"\"\nsnapshots = [\"clean\"]\n"+locked)
			st := status(t, d, "a")
			assert.Equal(t, "a", st.VM)
			assert.Equal(t, tc.power, st.Power)
			assert.Equal(t, tc.raw, st.Raw)
			assert.Equal(t, tc.lock, st.Lock)
			assert.Equal(t, "clean", st.CurrentSnapshot)
			assert.False(t, st.StateChanged.IsZero())
		})
	}
}

func TestStatusWithoutTheLockCapabilityReportsUnknownLock(t *testing.T) {
	t.Parallel()
	d := newFake(t, "capabilities = [\"stop.poweroff\", \"snapshot.restore\"]\n[vms.a]\nstate = \"running\"")
	assert.Equal(t, hypervisor.LockUnknown, status(t, d, "a").Lock)
}

func TestStatusFailuresAnswerUnavailableThenRecover(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\n[vms.a.faults]\nstatus_failures = 2")
	for range 2 {
		_, err := d.Status(testCtx(t), "a")
		requireCode(t, err, hypervisor.CodeUnavailable, hypervisor.OpStatus, "a")
	}
	assert.Equal(t, hypervisor.PowerOff, status(t, d, "a").Power)
}

func TestStartBootsTheVMAndReturnsOnceStarting(t *testing.T) {
	t.Parallel()
	// A start long enough for the status read after it to find it under
	// way on a busy machine.
	d := newFake(t, "[timing]\nstart = \"2s\"\n[vms.a]")
	require.NoError(t, d.Start(testCtx(t), "a"))
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerStarting, st.Power)
	assert.Equal(t, hypervisor.LockLocked, st.Lock)
	running := waitFor(t, d, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
	assert.Equal(t, "running", running.Raw)
	assert.Equal(t, []string{"start"}, journalOps(d))
}

func TestStartOfARunningOrStartingVMChangesNothing(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nstart = \"10s\"\n[vms.up]\nstate = \"running\"\n[vms.booting]")
	require.NoError(t, d.Start(testCtx(t), "booting"))
	before := status(t, d, "up")
	for _, vm := range []string{"up", "booting"} {
		require.NoError(t, d.Start(testCtx(t), vm), vm)
	}
	assert.Equal(t, before, status(t, d, "up"))
	assert.Equal(t, hypervisor.PowerStarting, status(t, d, "booting").Power)
	assert.Equal(t, []string{"start"}, journalOps(d), "only the first start reached the hypervisor")
}

func TestStartOfALockedOffVMAnswersLocked(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.win10-64-defender]\nlocked = true")
	err := d.Start(testCtx(t), "win10-64-defender")
	e := requireCode(t, err, hypervisor.CodeLocked, hypervisor.OpStart, "win10-64-defender")
	assert.Equal(t, "The machine 'win10-64-defender' is already locked by a session (or being locked or unlocked)", e.Message)
	assert.True(t, hypervisor.IsLocked(err))
	assert.Equal(t, hypervisor.PowerOff, status(t, d, "win10-64-defender").Power)
}

func TestStartRightAfterPowerOffMeetsTheLingeringLock(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"0s\"\nunlock_after_stop = \"10s\"\n[vms.a]\nstate = \"running\"")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, hypervisor.LockLocked, st.Lock, "the session outlives the VM process")
	requireCode(t, d.Start(testCtx(t), "a"), hypervisor.CodeLocked, hypervisor.OpStart, "a")
}

func TestStartOfAVMThatCannotStartAnswersByState(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		state string
		code  hypervisor.Code
	}{
		{"paused", hypervisor.CodeInvalidState},
		{"stuck", hypervisor.CodeInvalidState},
		{"stopping", hypervisor.CodeLocked},
	} {
		t.Run(tc.state, func(t *testing.T) {
			t.Parallel()
			d := newFake(t, "[vms.a]\nstate = \""+tc.state+"\"")
			requireCode(t, d.Start(testCtx(t), "a"), tc.code, hypervisor.OpStart, "a")
		})
	}
}

func TestStartFailuresFailTheFirstStartsOnly(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\n[vms.a.faults]\nstart_failures = 2")
	for range 2 {
		e := requireCode(t, d.Start(testCtx(t), "a"), hypervisor.CodeFailed, hypervisor.OpStart, "a")
		assert.Contains(t, e.Message, "terminated unexpectedly during startup")
		assert.Equal(t, hypervisor.PowerOff, status(t, d, "a").Power)
	}
	require.NoError(t, d.Start(testCtx(t), "a"))
	waitFor(t, d, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
}

func TestStartFromSavedResumesWithTheGuestReady(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nguest_ready = \"1h\"\n[vms.a]\nstate = \"saved\"")
	require.NoError(t, d.Start(testCtx(t), "a"))
	waitFor(t, d, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
	_, err := d.Exec(testCtx(t), "a", hypervisor.ExecRequest{Path: "true"})
	assert.NoError(t, err)
}

func TestStopOfAnOffLikeVMSendsNothing(t *testing.T) {
	t.Parallel()
	for _, state := range []string{"off", "saved", "aborted"} {
		for _, m := range hypervisor.StopMethods {
			t.Run(state+"/"+string(m), func(t *testing.T) {
				t.Parallel()
				// A stale lock makes the exception of §5.2 visible: only an
				// emergency stop acts on an off VM, and only on a held session.
				locked := m != hypervisor.StopEmergency
				d := newFake(t, fmt.Sprintf("[vms.a]\nlocked = %t\nstate = %q\n[vms.a.faults]\npoweroff_failures = 5", locked, state))
				before := status(t, d, "a")
				require.NoError(t, d.Stop(testCtx(t), "a", m))
				assert.Equal(t, before, status(t, d, "a"))
				assert.Empty(t, d.Journal())
			})
		}
	}
}

func TestEmergencyStopOfAnOffVMKillsTheProcessStillHoldingItsSession(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nunlock_after_stop = \"1h\"\nemergency = \"10ms\"\n[vms.a]\nstate = \"running\"")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	waitFor(t, d, "a", hypervisor.PowerOff, hypervisor.LockLocked)
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopEmergency))
	waitFor(t, d, "a", hypervisor.PowerOff, hypervisor.LockUnlocked)
}

func TestEmergencyStopCannotFreeASessionNoVMProcessHolds(t *testing.T) {
	t.Parallel()
	for _, table := range []string{
		"[vms.a]\nlocked = true",
		"[vms.a]\nstate = \"running\"\n[vms.a.faults]\nlock_held_after_stop = \"1h\"",
	} {
		d := newFake(t, table)
		if status(t, d, "a").Power == hypervisor.PowerRunning {
			require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
			waitFor(t, d, "a", hypervisor.PowerOff, hypervisor.LockLocked)
		}
		requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopEmergency), hypervisor.CodeLocked, hypervisor.OpStop, "a")
		assert.Equal(t, hypervisor.LockLocked, status(t, d, "a").Lock)
	}
}

func TestACPIShutdownTakesTheVMThroughStoppingToOff(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nunlock_after_stop = \"300ms\"\n[vms.a]\nstate = \"running\"")
	ch, err := d.Watch(testCtx(t), "a")
	require.NoError(t, err)
	require.Equal(t, hypervisor.PowerRunning, (<-ch).Power)
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopACPI))
	var seen []string
	for st := range ch {
		seen = append(seen, string(st.Power)+"/"+string(st.Lock))
		if st.Lock == hypervisor.LockUnlocked {
			break
		}
	}
	assert.Equal(t, []string{"stopping/locked", "off/locked", "off/unlocked"}, seen)
	assert.Equal(t, []string{"stop acpi"}, journalOps(d))
}

func TestACPIIgnoredByTheGuestLeavesItRunning(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nacpi_shutdown = \"20ms\"\n[vms.a]\nstate = \"running\"\n[vms.a.faults]\nacpi_ignored = true")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopACPI), "the button press itself succeeds")
	noChangeWithin(t, d, "a", 100*time.Millisecond)
	assert.Equal(t, hypervisor.PowerRunning, status(t, d, "a").Power)
	assert.Equal(t, "ok", d.Journal()[0].Outcome)
}

func TestACPIOfAVMThatIsNotRunningAnswersInvalidState(t *testing.T) {
	t.Parallel()
	for _, state := range []string{"paused", "stuck", "stopping"} {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			d := newFake(t, "[vms.a]\nstate = \""+state+"\"")
			e := requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopACPI), hypervisor.CodeInvalidState, hypervisor.OpStop, "a")
			assert.Contains(t, e.Message, "Invalid machine state: ")
		})
	}
}

func TestPowerOffStopsTheVMAndTheLockLingers(t *testing.T) {
	t.Parallel()
	for _, state := range []string{"running", "paused", "stuck"} {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			d := newFake(t, "[timing]\npoweroff = \"300ms\"\nunlock_after_stop = \"300ms\"\n[vms.a]\nstate = \""+state+"\"")
			ch, err := d.Watch(testCtx(t), "a")
			require.NoError(t, err)
			<-ch
			require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
			var seen []string
			var unlocked hypervisor.Status
			for st := range ch {
				seen = append(seen, string(st.Power)+"/"+string(st.Lock))
				if st.Lock == hypervisor.LockUnlocked {
					unlocked = st
					break
				}
			}
			assert.Equal(t, []string{"stopping/locked", "off/locked", "off/unlocked"}, seen,
				"accepted, not yet done (§5.3); off before the session is gone")
			assert.GreaterOrEqual(t, time.Since(unlocked.StateChanged), 290*time.Millisecond,
				"the lock outlived the process by unlock_after_stop")
			assert.Equal(t, "poweroff", unlocked.Raw)
		})
	}
}

func TestPowerOffOfAVMAlreadyStoppingAnswersInvalidState(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"stopping\"")
	e := requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff), hypervisor.CodeInvalidState, hypervisor.OpStop, "a")
	assert.Equal(t, "Invalid machine state: Stopping", e.Message)
}

func TestPowerOffOfAStartingVMAnswersInvalidState(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nstart = \"10s\"\n[vms.a]")
	require.NoError(t, d.Start(testCtx(t), "a"))
	e := requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff), hypervisor.CodeInvalidState, hypervisor.OpStop, "a")
	assert.Equal(t, "Invalid machine state: Starting", e.Message)
}

func TestAVMStuckInStoppingLeavesOnlyByEmergencyStop(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"20ms\"\n[vms.a]\nstate = \"running\"\n[vms.a.faults]\nstuck_in_stopping = true")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	noChangeWithin(t, d, "a", 100*time.Millisecond)
	assert.Equal(t, hypervisor.PowerStopping, status(t, d, "a").Power)
	requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff), hypervisor.CodeInvalidState, hypervisor.OpStop, "a")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopEmergency))
	st := waitFor(t, d, "a", hypervisor.PowerAborted, hypervisor.LockUnlocked)
	assert.Equal(t, "aborted", st.Raw)
	assert.Equal(t, []string{"stop poweroff", "stop poweroff", "stop emergency"}, journalOps(d))
}

func TestPowerOffFailuresFailTheFirstPowerOffsWithTheChosenCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		error string
		code  hypervisor.Code
		msg   string
	}{
		{"", hypervisor.CodeFailed, "Failed to power off machine"},
		{"failed", hypervisor.CodeFailed, "Failed to power off machine"},
		{"locked", hypervisor.CodeLocked, "The machine 'a' is already locked for a session (or being unlocked)"},
		{"invalid_state", hypervisor.CodeInvalidState, "Invalid machine state: Running"},
	} {
		t.Run(tc.code.String()+tc.error, func(t *testing.T) {
			t.Parallel()
			faults := "poweroff_failures = 2"
			if tc.error != "" {
				faults += "\npoweroff_error = \"" + tc.error + "\""
			}
			d := newFake(t, "[vms.a]\nstate = \"running\"\n[vms.a.faults]\n"+faults)
			for range 2 {
				e := requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff), tc.code, hypervisor.OpStop, "a")
				assert.Equal(t, tc.msg, e.Message)
				assert.Equal(t, hypervisor.PowerRunning, status(t, d, "a").Power)
			}
			require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
			waitFor(t, d, "a", hypervisor.PowerOff, hypervisor.LockUnlocked)
		})
	}
}

func TestEmergencyStopAbortsAnyVMWithAProcess(t *testing.T) {
	t.Parallel()
	for _, state := range []string{"running", "paused", "stopping", "stuck", "starting"} {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			table := "[timing]\nstart = \"10s\"\n[vms.a]\nstate = \"" + state + "\""
			if state == "starting" {
				table = "[timing]\nstart = \"10s\"\n[vms.a]"
			}
			d := newFake(t, table)
			if state == "starting" {
				require.NoError(t, d.Start(testCtx(t), "a"))
			}
			require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopEmergency))
			waitFor(t, d, "a", hypervisor.PowerAborted, hypervisor.LockUnlocked)
		})
	}
}

func TestEmergencyStopDoesNotDelayAPowerOffAboutToFinish(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"0s\"\nemergency = \"10s\"\nunlock_after_stop = \"0s\"\n[vms.a]\nstate = \"running\"\n[vms.a.timing]\npoweroff = \"30ms\"")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopEmergency))
	waitFor(t, d, "a", hypervisor.PowerOff, hypervisor.LockUnlocked)
}

func TestAnUnknownStopMethodIsUnsupported(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"")
	requireCode(t, d.Stop(testCtx(t), "a", "reset"), hypervisor.CodeUnsupported, hypervisor.OpStop, "a")
}

func TestUnlockOfAVMWithAProcessAnswersInvalidState(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"")
	e := requireCode(t, d.Unlock(testCtx(t), "a"), hypervisor.CodeInvalidState, hypervisor.OpUnlock, "a")
	assert.Equal(t, "Invalid machine state: Running", e.Message)
}

func TestUnlockOfAnUnlockedVMReturnsAtOnceAndSendsNothing(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]")
	require.NoError(t, d.Unlock(testCtx(t), "a"))
	assert.Empty(t, d.Journal())
}

func TestUnlockWaitsForALingeringLock(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"0s\"\nunlock_after_stop = \"400ms\"\n[vms.a]\nstate = \"running\"")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	off := status(t, d, "a")
	require.Equal(t, hypervisor.LockLocked, off.Lock)
	require.NoError(t, d.Unlock(testCtx(t), "a"))
	assert.GreaterOrEqual(t, time.Since(off.StateChanged), 390*time.Millisecond)
	assert.Equal(t, hypervisor.LockUnlocked, status(t, d, "a").Lock, "§6.3")
}

func TestUnlockCannotShortenALockHeldAfterStop(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"0s\"\n[vms.a]\nstate = \"running\"\n[vms.a.faults]\nlock_held_after_stop = \"1s\"")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	off := status(t, d, "a")
	requireCode(t, d.Unlock(plugintest.Context(t, 50*time.Millisecond), "a"), hypervisor.CodeTimeout, hypervisor.OpUnlock, "a")
	assert.Equal(t, hypervisor.LockLocked, status(t, d, "a").Lock)
	require.NoError(t, d.Unlock(testCtx(t), "a"))
	assert.GreaterOrEqual(t, time.Since(off.StateChanged), 990*time.Millisecond)
	assert.Equal(t, hypervisor.LockUnlocked, status(t, d, "a").Lock)
	assert.Equal(t, []string{"timeout", "ok"}, []string{d.Journal()[1].Outcome, d.Journal()[2].Outcome})
}

func TestAStaleLockStaysUntilUnlockReleasesIt(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\npoweroff = \"0s\"\nunlock_after_stop = \"20ms\"\n[vms.a]\nstate = \"running\"\n[vms.a.faults]\nstale_lock_after_stop = true")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	noChangeWithin(t, d, "a", 100*time.Millisecond)
	assert.Equal(t, hypervisor.LockLocked, status(t, d, "a").Lock)
	requireCode(t, d.Restore(testCtx(t), "a", ""), hypervisor.CodeNotFound, hypervisor.OpRestore, "a")
	require.NoError(t, d.Unlock(testCtx(t), "a"))
	assert.Equal(t, hypervisor.LockUnlocked, status(t, d, "a").Lock)
}

func TestAConfiguredStaleLockIsReleasedByUnlock(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nlocked = true\nsnapshots = [\"clean\"]")
	requireCode(t, d.Restore(testCtx(t), "a", "clean"), hypervisor.CodeLocked, hypervisor.OpRestore, "a")
	require.NoError(t, d.Unlock(testCtx(t), "a"))
	require.NoError(t, d.Restore(testCtx(t), "a", "clean"))
}

func TestRestoreGoesToTheSnapshotAndBlocksWhileRestoring(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nrestore = \"100ms\"\n[vms.a]\nstate = \"aborted\"\nsnapshots = [\"clean\", \"after-install\"]\ncurrent_snapshot = \"after-install\"")
	start := time.Now()
	require.NoError(t, d.Restore(testCtx(t), "a", "clean"))
	assert.GreaterOrEqual(t, time.Since(start), 90*time.Millisecond)
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	assert.Equal(t, "clean", st.CurrentSnapshot)
	require.NoError(t, d.Restore(testCtx(t), "a", ""), "empty means the current snapshot")
	st2 := status(t, d, "a")
	assert.Equal(t, "clean", st2.CurrentSnapshot)
	assert.Equal(t, hypervisor.PowerOff, st2.Power, "restoring twice is the same as once (§7.4)")
	entries := d.Journal()
	require.Len(t, entries, 2)
	assert.Equal(t, "clean", entries[1].Snapshot, "the journal names the snapshot the current one resolved to")
}

func TestRestoreShowsRestoringAndHoldsTheLockMeanwhile(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nrestore = \"1s\"\n[vms.a]\nsnapshots = [\"clean\"]")
	done := make(chan error, 1)
	go func() { done <- d.Restore(testCtx(t), "a", "clean") }()
	st := waitStatus(t, d, "a", "restoring", func(st hypervisor.Status) bool { return st.Power == hypervisor.PowerRestoring })
	assert.Equal(t, hypervisor.LockLocked, st.Lock)
	assert.Equal(t, "restoringsnapshot", st.Raw)
	requireCode(t, d.Start(testCtx(t), "a"), hypervisor.CodeLocked, hypervisor.OpStart, "a")
	requireCode(t, d.Restore(testCtx(t), "a", "clean"), hypervisor.CodeLocked, hypervisor.OpRestore, "a")
	require.NoError(t, <-done)
}

func TestRestoreOfAnOnlineSnapshotYieldsSaved(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nsnapshots = [\"clean\", \"live\"]\nonline_snapshots = [\"live\"]")
	require.NoError(t, d.Restore(testCtx(t), "a", "live"))
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerSaved, st.Power)
	assert.Equal(t, "live", st.CurrentSnapshot)
}

func TestRestoreRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		table    string
		snapshot string
		code     hypervisor.Code
		msg      string
	}{
		{"an unknown snapshot is not found", "snapshots = [\"clean\"]", "dirty", hypervisor.CodeNotFound,
			"Could not find a snapshot named 'dirty'"},
		{"a VM without snapshots has no current one", "", "", hypervisor.CodeNotFound,
			"This machine does not have any snapshots"},
		{"a running VM answers invalid state", "state = \"running\"\nsnapshots = [\"clean\"]", "clean",
			hypervisor.CodeInvalidState, "Cannot delete the current state of the running machine (machine state: Running)"},
		{"a paused VM answers invalid state", "state = \"paused\"\nsnapshots = [\"clean\"]", "", hypervisor.CodeInvalidState,
			"(machine state: Paused)"},
		{"a locked VM answers locked", "locked = true\nsnapshots = [\"clean\"]", "clean", hypervisor.CodeLocked,
			"The machine 'a' is already locked for a session (or being unlocked)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newFake(t, "[vms.a]\n"+tc.table)
			before := status(t, d, "a")
			e := requireCode(t, d.Restore(testCtx(t), "a", tc.snapshot), tc.code, hypervisor.OpRestore, "a")
			assert.Contains(t, e.Message, tc.msg)
			assert.Equal(t, before, status(t, d, "a"))
		})
	}
}

func TestRestoreFailuresFailTheFirstRestores(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nsnapshots = [\"clean\"]\n[vms.a.faults]\nrestore_failures = 1")
	requireCode(t, d.Restore(testCtx(t), "a", ""), hypervisor.CodeFailed, hypervisor.OpRestore, "a")
	require.NoError(t, d.Restore(testCtx(t), "a", ""))
}

func TestRestoreAbandonedAtTheDeadlineLeavesTheVMAsItWas(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nrestore = \"10s\"\n[vms.a]\nstate = \"aborted\"\nsnapshots = [\"clean\", \"old\"]\ncurrent_snapshot = \"old\"")
	before := status(t, d, "a")
	start := time.Now()
	requireCode(t, d.Restore(plugintest.Context(t, 50*time.Millisecond), "a", "clean"), hypervisor.CodeTimeout, hypervisor.OpRestore, "a")
	assert.Less(t, time.Since(start), time.Second, "returns promptly at the deadline")
	assert.Equal(t, before, status(t, d, "a"))
}

func TestPowerOffDoesNotDelayAnEmergencyStopUnderWay(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[timing]\nemergency = \"200ms\"\npoweroff = \"1h\"\n[vms.a]\nstate = \"running\"")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopEmergency))
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	waitFor(t, d, "a", hypervisor.PowerAborted, hypervisor.LockUnlocked)
}
