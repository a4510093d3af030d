package vboxmanage_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// composedVM is the rig's VM with the cleanup composed by the core and
// short deadlines.
func composedVM(r *rig, restoreTimeout time.Duration) lifecycle.VM {
	return managedVM(r, vmName, func(s *config.Lifecycle) {
		s.NativeCleanup = false
		s.StopLadder = []string{config.StopPowerOff, config.StopEmergency}
		s.ReleaseTimeout = time.Second
		s.RestoreTimeout = restoreTimeout
	})
}

// When VirtualBox keeps refusing a restore as locked while the listing
// shows no session (a VM process that never exits, its session name
// hidden), the composed cleanup frees the VM as the native one does: it
// unlocks actively, which kills the VM process, and restores again.
func TestComposedCleanupGetsPastALockTheListingDoesNotShow(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) }),
		withFaults(func(f *vboxsim.Faults) { f.HideSessionName = true }),
		withSetting("retry.locked", `"1s"`))
	ctx := plugintest.Context(t, time.Minute)
	m := lifecycle.New(lifecycle.Options{Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: r.logs})})
	vm := composedVM(r, 20*time.Second)
	require.NoError(t, r.drv.Start(ctx, vmName))
	start := time.Now()
	rep, err := m.Cleanup(ctx, vm)
	require.NoError(t, err, "%v", stepNames(rep))
	assert.Less(t, time.Since(start), 15*time.Second)
	assert.Equal(t, lifecycle.PathComposed, rep.Path)
	assert.Equal(t, 1, r.argvCount(t, "--type", "emergencystop"), "the VM process holding the session was killed")
	require.NotNil(t, rep.Final)
	assert.Equal(t, hypervisor.LockUnlocked, rep.Final.Lock)
	assert.Equal(t, "clean", rep.Final.CurrentSnapshot)
}

// A holder the driver may not kill (the GUI) keeps the restore refused
// until restore_timeout; the error then carries VirtualBox's own words.
func TestARestoreRefusedUntilItsDeadlineKeepsVirtualBoxsLastMessage(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withFaults(func(f *vboxsim.Faults) { f.HideSessionName = true }),
		withSetting("retry.locked", `"500ms"`))
	r.sim.Update(t, func(w *vboxsim.World) {
		w.Find(vmName).Session = vboxsim.Session{State: vboxsim.Locked, Owner: vboxsim.OwnerGUI, Name: "GUI/Qt"}
	})
	ctx := plugintest.Context(t, time.Minute)
	m := lifecycle.New(lifecycle.Options{})
	rep, err := m.Restore(ctx, composedVM(r, 3*time.Second))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "already locked", "VirtualBox's last word is kept")
	assert.True(t, strings.Contains(rep.Error, "already locked"), rep.Error)
	assert.Equal(t, vboxsim.OwnerGUI, r.sim.VM(t, vmName).Session.Owner, "the GUI keeps its session")
}
