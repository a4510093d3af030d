package vboxmanage_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
)

// §5.2: stopping an off VM sends nothing, except that an emergency stop
// of an off VM whose session is still held kills the VM process holding
// it, answers locked when the holder is not a VM process, and succeeds
// when the process exits by itself just before the kill.
func TestEmergencyStopOfAStoppedVM(t *testing.T) {
	t.Parallel()
	emergencyStopOfAStoppedVM(t, newRig(t, profiles[2], withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) })))
}

func TestPluginEmergencyStopOfAStoppedVM(t *testing.T) {
	t.Parallel()
	emergencyStopOfAStoppedVM(t, newPluginRig(t, profiles[1], withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) })))
}

// emergencyStopOfAStoppedVM expects a world whose VM processes never exit
// by themselves after a power-off.
func emergencyStopOfAStoppedVM(t *testing.T, r *rig) {
	ctx := testContext(t)
	d := r.drv
	kills := func() int { return r.argvCount(t, "--type", "emergencystop") }
	controls := func() int { return r.argvCount(t, "controlvm") }

	// Off and free: no method sends anything.
	for _, m := range hypervisor.StopMethods {
		require.NoError(t, d.Stop(ctx, vmName, m), m)
	}
	assert.Zero(t, kills()+controls(), "nothing reaches an off, unlocked VM")

	// Off, its exiting VM process still holding the session: only the
	// emergency stop acts, and it frees the VM.
	require.NoError(t, d.Start(ctx, vmName))
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopPowerOff))
	st, err := d.Status(ctx, vmName)
	require.NoError(t, err)
	require.Equal(t, hypervisor.PowerOff, st.Power)
	require.Equal(t, hypervisor.LockLocked, st.Lock)
	before := controls()
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopACPI))
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopPowerOff))
	assert.Equal(t, before, controls(), "ACPI and power-off send nothing to an off VM, held or not")
	assert.Zero(t, kills())
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopEmergency))
	assert.Equal(t, 1, kills())
	st, err = d.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock, "the session is released")
	assert.Equal(t, hypervisor.PowerOff, st.Power, "a powered-off VM whose process is killed stays powered off")

	// The process exits just as the kill comes: nothing holds the VM any
	// more, which is success.
	require.NoError(t, d.Start(ctx, vmName))
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopPowerOff))
	r.sim.Update(t, func(w *vboxsim.World) { w.Config.Faults.ExitBeforeKill = true })
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopEmergency), "'not locked by a session' is success")
	assert.Equal(t, 2, kills())
	r.waitStatus(t, vmName, offAndUnlocked)

	// A holder that is not a VM process is not killed: locked, at once.
	r.sim.Update(t, func(w *vboxsim.World) {
		w.Find(vmName).Session = vboxsim.Session{State: vboxsim.Locked, Owner: vboxsim.OwnerGUI, Name: "GUI/Qt"}
	})
	err = d.Stop(ctx, vmName, hypervisor.StopEmergency)
	require.Error(t, err)
	assert.True(t, hypervisor.IsLocked(err), "%v", err)
	var he *hypervisor.Error
	require.ErrorAs(t, err, &he)
	assert.Equal(t, hypervisor.OpStop, he.Op)
	assert.Equal(t, vmName, he.VM)
	assert.Contains(t, he.Message, "does not have a VM process")
	// "At once" is judged by the count, not by a time a busy machine
	// stretches: one emergencystop, no retries.
	assert.Equal(t, 3, kills(), "no retries: such a holder lets go when its user decides")
	assert.Equal(t, vboxsim.OwnerGUI, r.sim.VM(t, vmName).Session.Owner, "the GUI keeps its session")
}

// A VM found starting cannot be powered off yet: the native cleanup waits
// for it to run and powers it off then, or kills it when it stays starting
// for longer than a start takes, never idling through cleanup.stop_wait.
func TestCleanupOfAStartingVM(t *testing.T) {
	t.Parallel()
	starting := func(r *rig) {
		r.sim.Update(t, func(w *vboxsim.World) { w.Find(vmName).Boot("starting") })
	}
	t.Run("comes up, then is powered off", func(t *testing.T) {
		t.Parallel()
		// The VM comes up 3 s after the fixture put it in starting: long
		// enough that the cleanup's first look finds it starting on a busy
		// machine too. stop_wait is far longer than anything here, so
		// that a cleanup that waited it out is told from one that did not.
		r := newRig(t, profiles[2], withSetting("cleanup.stop_wait", `"5m"`),
			withTiming(func(tm *vboxsim.Timing) { tm.Start = vboxsim.Duration(3 * time.Second) }))
		ctx := testContext(t)
		_, err := r.drv.Info(ctx)
		require.NoError(t, err)
		starting(r)
		begun := time.Now()
		res, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
		require.NoError(t, err)
		assert.Equal(t, []string{"wait-running", "poweroff", "wait-off", "restore clean"}, actions(res))
		assert.Equal(t, "done", res.Steps[0].Outcome)
		assert.Equal(t, "done", res.Steps[1].Outcome, "powered off as soon as it ran")
		assert.Less(t, time.Since(begun), time.Minute, "not cleanup.stop_wait (5m)")
		assert.Zero(t, r.argvCount(t, "emergencystop"))
		st := r.waitStatus(t, vmName, offAndUnlocked)
		assert.Equal(t, hypervisor.PowerOff, st.Power)
	})
	t.Run("stuck starting, killed after the starting grace", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[2], withSetting("cleanup.stop_wait", `"5m"`),
			withFaults(func(f *vboxsim.Faults) { f.HangStarting = true }))
		vboxmanage.SetStartingGrace(r.native, 300*time.Millisecond)
		ctx := testContext(t)
		starting(r)
		begun := time.Now()
		res, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
		require.NoError(t, err)
		assert.Equal(t, []string{"wait-running", "emergencystop", "wait-off", "restore clean"}, actions(res))
		assert.Equal(t, "still starting", res.Steps[0].Outcome)
		assert.Less(t, time.Since(begun), time.Minute, "not cleanup.stop_wait (5m)")
		assert.Zero(t, r.argvCount(t, "controlvm", "poweroff"), "a power-off is refused while starting")
		st := r.waitStatus(t, vmName, offAndUnlocked)
		assert.Equal(t, "clean", st.CurrentSnapshot)
	})
	t.Run("stuck starting, stop_wait shorter than the grace", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[2], withSetting("cleanup.stop_wait", `"500ms"`),
			withFaults(func(f *vboxsim.Faults) { f.HangStarting = true }))
		// A grace far longer than the bound below tells a cleanup cut at
		// stop_wait from one that waited out the grace, with slack for a
		// busy machine.
		vboxmanage.SetStartingGrace(r.native, 5*time.Minute)
		ctx := testContext(t)
		starting(r)
		begun := time.Now()
		res, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{})
		require.NoError(t, err)
		assert.Equal(t, []string{"wait-running", "emergencystop", "wait-off"}, actions(res))
		assert.Less(t, time.Since(begun), time.Minute, "not the starting grace (5m)")
	})
}

// A hung power-off in a cleanup is cut at cleanup.stop_wait, as documented,
// not at timeouts.poweroff: the VM process is then killed and the cleanup
// goes on.
func TestCleanupCutsAHungPowerOffAtStopWait(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withFaults(func(f *vboxsim.Faults) { f.HangPowerOff = true }),
		withSetting("timeouts.poweroff", `"5m"`),
		withSetting("cleanup.stop_wait", `"1s"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	start := time.Now()
	res, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true})
	took := time.Since(start)
	require.NoError(t, err)
	assert.Less(t, took, time.Minute, "the hung power-off ran to timeouts.poweroff (5m), past cleanup.stop_wait (1s)")
	var names []string
	for _, s := range res.Steps {
		names = append(names, s.Action)
	}
	assert.Contains(t, names, "emergencystop")
	r.waitStatus(t, vmName, offAndUnlocked)
}
