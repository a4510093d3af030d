package fake

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

const relaunchTable = `
	state_dir = "state"
	journal = "journal.jsonl"
	[timing]
	start = "3s"
	[vms.a]
	snapshots = ["clean"]
	[vms.b]
	state = "running"
	[vms.b.timing]
	poweroff = "0s"
	[vms.b.faults]
	stale_lock_after_stop = true
	[vms.c]
	state = "running"
	[vms.c.faults]
	poweroff_failures = 1
`

func TestARelaunchedDriverFindsTheWorldAsTheLastOneLeftIt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := openFake(t, dir, relaunchTable)
	require.NoError(t, first.Start(testCtx(t), "a"))
	require.NoError(t, first.Stop(testCtx(t), "b", hypervisor.StopPowerOff))
	requireCode(t, first.Stop(testCtx(t), "c", hypervisor.StopPowerOff), hypervisor.CodeFailed, hypervisor.OpStop, "c")
	startedAt := status(t, first, "a").StateChanged
	require.NoError(t, first.Close())

	second := openFake(t, dir, relaunchTable)
	a := status(t, second, "a")
	assert.Equal(t, hypervisor.PowerStarting, a.Power, "the start under way carried over")
	assert.True(t, startedAt.Equal(a.StateChanged))
	running := waitFor(t, second, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
	assert.True(t, running.StateChanged.Equal(startedAt.Add(3*time.Second)), "it falls due when it was due")

	b := status(t, second, "b")
	assert.Equal(t, hypervisor.PowerOff, b.Power)
	assert.Equal(t, hypervisor.LockLocked, b.Lock, "the stale lock outlived the driver")
	require.NoError(t, second.Unlock(testCtx(t), "b"))

	require.NoError(t, second.Stop(testCtx(t), "c", hypervisor.StopPowerOff), "the one scripted failure was used up")

	entries, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	require.NoError(t, err)
	var ops []string
	for _, e := range entries {
		ops = append(ops, e.Op+" "+e.VM)
	}
	assert.Equal(t, []string{"start a", "stop b", "stop c", "unlock b", "stop c"}, ops, "both drivers appended")
}

func TestTheWorldIsSavedAfterEveryChange(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := openFake(t, dir, "state_dir = \"state\"\n[timing]\nstart = \"1h\"\n[vms.a]")
	require.NoError(t, d.Start(testCtx(t), "a"))
	data, err := os.ReadFile(filepath.Join(dir, "state", worldFile))
	require.NoError(t, err)
	var w world
	require.NoError(t, json.Unmarshal(data, &w))
	a := w.VMs["a"]
	assert.Equal(t, hypervisor.PowerStarting, a.Power)
	require.NotNil(t, a.Pending)
	assert.Equal(t, hypervisor.PowerRunning, a.Pending.To)
	assert.True(t, a.Dirty)
}

func TestAnUnreadableWorldIsAConfigError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "state"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "state", worldFile), []byte("{not json"), 0o644))
	_, err := New(configIn(t, dir, "state_dir = \"state\""), hclog.NewNullLogger())
	var ce *configfile.Error
	require.True(t, errors.As(err, &ce), "%T: %v", err, err)
	assert.Equal(t, "plugins.fake.config.state_dir", ce.Key)
	assert.Contains(t, ce.Msg, worldFile)
}

func TestExitDuringHappensOncePerWorldWithAStateDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	table := `
		state_dir = "state"
		journal = "journal.jsonl"
		[vms.a]
		state = "running"
		[vms.a.faults]
		exit_during = ["poweroff", "status"]
	`
	first := openFake(t, dir, table)
	exited := exits(first)
	err := first.Stop(testCtx(t), "a", hypervisor.StopPowerOff)
	requireCode(t, err, hypervisor.CodeUnavailable, hypervisor.OpStop, "a")
	_, err = first.Status(testCtx(t), "a")
	requireCode(t, err, hypervisor.CodeUnavailable, hypervisor.OpStatus, "a")
	assert.Equal(t, []int{exitFaultStatus, exitFaultStatus}, *exited)
	require.NoError(t, first.Close())

	second := openFake(t, dir, table)
	exitedAgain := exits(second)
	st := status(t, second, "a")
	assert.NotEqual(t, hypervisor.PowerRunning, st.Power, "the power-off took before the process died")
	waitFor(t, second, "a", hypervisor.PowerOff, hypervisor.LockUnlocked)
	require.NoError(t, second.Start(testCtx(t), "a"))
	waitFor(t, second, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
	require.NoError(t, second.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	assert.Empty(t, *exitedAgain, "a relaunch does not repeat the exits")

	entries, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	assert.Equal(t, "exit", entries[0].Outcome, "the call was journaled before the process exited")
}

func TestExitDuringWithoutAStateDirHappensOncePerProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	table := "[vms.a]\n[vms.a.faults]\nexit_during = [\"start\", \"restore\", \"exec\"]"
	for range 2 { // two processes, each with a fresh memory
		d := openFake(t, dir, table)
		exited := exits(d)
		requireCode(t, d.Start(testCtx(t), "a"), hypervisor.CodeUnavailable, hypervisor.OpStart, "a")
		waitFor(t, d, "a", hypervisor.PowerRunning, hypervisor.LockLocked)
		assert.Equal(t, []int{exitFaultStatus}, *exited)
		require.NoError(t, d.Close())
	}
}

func TestExitDuringCleanupFiresAtItsFirstCommand(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"\n[vms.a.faults]\nexit_during = [\"cleanup\"]")
	exited := exits(d)
	res, err := d.Cleanup(testCtx(t), "a", hypervisor.CleanupRequest{})
	requireCode(t, err, hypervisor.CodeUnavailable, hypervisor.OpCleanup, "a")
	assert.Equal(t, []string{"poweroff"}, actionsOf(res))
	assert.Equal(t, []int{exitFaultStatus}, *exited)
	assert.Equal(t, []string{"stop poweroff", "cleanup"}, journalOps(d))
	assert.Equal(t, "exit", d.Journal()[1].Outcome)
	waitFor(t, d, "a", hypervisor.PowerOff, hypervisor.LockUnlocked)
}

func TestTwoDriversOnOneStateDirShareTheWorld(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const table = `
	state_dir = "state"
	[timing]
	start = "50ms"
	unlock_after_stop = "50ms"
	[vms.a]
	snapshots = ["clean"]
	[vms.b]
	state = "running"
	snapshots = ["clean"]
	[vms.b.faults]
	stale_lock_after_stop = true
	`
	one := openFake(t, dir, table)
	two := openFake(t, dir, table)

	require.NoError(t, one.Start(testCtx(t), "a"))
	// Starting, or running already if the machine is busy: not off.
	assert.Contains(t, []hypervisor.PowerState{hypervisor.PowerStarting, hypervisor.PowerRunning}, status(t, two, "a").Power,
		"a start by one is seen by the other")
	require.NoError(t, two.Start(testCtx(t), "a"), "starting a VM the other started is a no-op (§4.2)")
	waitFor(t, two, "a", hypervisor.PowerRunning, hypervisor.LockLocked)

	// A wait in one process ends on a change made by the other.
	require.NoError(t, one.Stop(testCtx(t), "b", hypervisor.StopPowerOff))
	waitFor(t, two, "b", hypervisor.PowerOff, hypervisor.LockLocked)
	requireCode(t, two.Restore(testCtx(t), "b", ""), hypervisor.CodeLocked, hypervisor.OpRestore, "b")
	require.NoError(t, one.Unlock(testCtx(t), "b"))
	require.NoError(t, two.Restore(testCtx(t), "b", ""), "the unlock by one freed the VM for the other")
}

func TestFaultsInjectedIntoASharedWorldReachEveryDriver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const table = `
	state_dir = "state"
	[timing]
	restore = "0s"
	[vms.a]
	snapshots = ["clean"]
	`
	plugin := openFake(t, dir, table)
	require.NoError(t, plugin.Restore(testCtx(t), "a", "clean"))

	control := openFake(t, dir, table) // the test's own view of the world
	require.NoError(t, control.Inject("a", Faults{RestoreFailures: 1, CopyInFailures: 2}))
	requireCode(t, plugin.Restore(testCtx(t), "a", "clean"), hypervisor.CodeFailed, hypervisor.OpRestore, "a")
	require.NoError(t, plugin.Restore(testCtx(t), "a", "clean"), "one injected failure, used up")

	require.NoError(t, control.Inject("a", Faults{RestoreFailures: 1}))
	requireCode(t, plugin.Restore(testCtx(t), "a", "clean"), hypervisor.CodeFailed, hypervisor.OpRestore, "a")

	require.NoError(t, control.Inject("a", Faults{RestoreFailures: 5}))
	require.NoError(t, control.Heal("a"))
	require.NoError(t, plugin.Restore(testCtx(t), "a", "clean"), "healed")

	assert.Error(t, control.Inject("a", Faults{StartFailures: -1}), "an invalid fault is refused")
	requireCode(t, control.Inject("nope", Faults{}), hypervisor.CodeNotFound, "inject", "nope")
}
