//go:build unix

package vboxmanage_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// A SIGKILLed plugin leaves no VBoxManage behind: the power-off it was
// running dies with it.
func TestPluginKilledMidPowerOffLeavesNoVBoxManage(t *testing.T) {
	t.Parallel()
	r := newPluginRig(t, profiles[2],
		withFaults(func(f *vboxsim.Faults) { f.HangPowerOff = true }),
		withSetting("timeouts.poweroff", `"5m"`),
		withSetting("cleanup.stop_wait", `"5m"`))
	ctx := plugintest.Context(t, time.Minute)
	require.NoError(t, r.drv.Start(ctx, vmName))
	done := make(chan error, 1)
	go func() {
		_, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true})
		done <- err
	}()
	poweroff := r.inFlight(t, "controlvm", "poweroff")
	plugin := r.plugin.Pid()
	require.NotZero(t, plugin)
	require.NoError(t, syscall.Kill(plugin, syscall.SIGKILL))
	assert.Eventually(t, func() bool { return plugintest.Gone(poweroff) }, 30*time.Second, 5*time.Millisecond,
		"VBoxManage %d outlived its SIGKILLed plugin %d", poweroff, plugin)
	select {
	case err := <-done:
		assert.Error(t, err, "the cleanup in flight fails with its plugin")
	case <-time.After(5 * time.Second):
		t.Fatal("the cleanup in flight did not fail with its plugin")
	}
}

// With password_env, the guest password is in the plugin's environment;
// it must not be in VBoxManage's (where `ps e` shows it, and where on a real
// host it would reach VBoxSVC).
func TestVBoxManageNeverSeesTheGuestPasswordVariable(t *testing.T) {
	t.Setenv("SANDBOX_TEST_GUEST_PW", guestPW)
	t.Setenv("SANDBOX_TEST_OTHER_SECRET", "token")
	r := newRig(t, profiles[2],
		withSetting("guest.password_file", ""),
		withSetting("guest.password_env", `"SANDBOX_TEST_GUEST_PW"`),
		withFaults(func(f *vboxsim.Faults) { f.HangPowerOff = true }),
		withSetting("timeouts.poweroff", `"1m"`))
	ctx := plugintest.Context(t, time.Minute)
	require.NoError(t, r.drv.Start(ctx, vmName))
	res, err := r.drv.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo", Args: []string{"ok"}})
	require.NoError(t, err, "the password still reaches the guest, through its file")
	assert.Equal(t, "ok\n", string(res.Stdout))

	go func() { _ = r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff) }()
	pid := r.inFlight(t, "controlvm", "poweroff")
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("no /proc on this host")
	}
	require.NoError(t, err)
	env := strings.Split(string(environ), "\x00")
	assert.NotContains(t, string(environ), guestPW)
	for _, kv := range env {
		assert.False(t, strings.HasPrefix(kv, "SANDBOX_TEST_"), "%s reached VBoxManage", kv)
	}
	assert.Contains(t, env, "LC_ALL=C")
	require.NoError(t, r.native.Close())
}
