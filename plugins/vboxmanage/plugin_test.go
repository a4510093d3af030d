package vboxmanage_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// These tests run the driver as users run it: the sandbox-plugin-vboxmanage
// executable, launched by the plugin host with the CLI's minimal
// environment, every call crossing the gRPC adapters, VBoxManage played by
// the simulator for each VirtualBox version and host style. The in-process
// tests of the other files check the driver's logic more finely; these
// check that it survives being a plugin.

const (
	pluginPkg = "github.com/sandboxhq/sandbox/plugins/vboxmanage/cmd/sandbox-plugin-vboxmanage"
	cliPkg    = "github.com/sandboxhq/sandbox/cmd/sandbox"
)

// programs are the executables the end-to-end tests run, each built once
// per test process on first use (benchmarks build none) into one
// directory that TestMain removes.
var programs builds

type builds struct{ plugintest.Cache }

// path builds pkg on first use and returns its executable.
func (b *builds) path(t testing.TB, pkg string) string {
	t.Helper()
	p, err := b.Path(pkg)
	require.NoError(t, err)
	return p
}

// pluginStartTimeout is the plugins' start_timeout in these tests: no test
// judges how fast a plugin starts, and a busy machine that launches eight
// race-detected plugins at once spends config's default (10 s) on the
// handshake.
const pluginStartTimeout = 2 * time.Minute

// newPluginRig launches the plugin binary through the plugin host, as the
// CLI does, on a simulated installation. The host logs at trace level into
// r.logs, which then holds the host's own lines and every line the plugin
// logged.
func newPluginRig(t testing.TB, p profile, opts ...rigOption) *rig {
	t.Helper()
	r, env := prepare(t, p, opts...)
	logger := hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Trace, Output: r.logs})
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"vbox": {AutoMTLS: true, StartTimeout: pluginStartTimeout, Path: programs.path(t, pluginPkg), Env: env}},
		File:    r.file,
		Data:    []byte(r.config),
		Logger:  logger,
	})
	t.Cleanup(h.Close)
	pl, err := h.Plugin("vbox")
	require.NoError(t, err)
	r.plugin, r.drv = pl, pl
	return r
}

// TestPluginEveryOperation runs every operation through the plugin for
// every simulated version and host style, then what only the wire can
// break: the description, typed errors with their messages, and the
// operation the driver does not offer. -short runs it on the full profile
// alone: the wire is the same for every profile, and TestEveryOperation
// runs every profile's texts in process.
func TestPluginEveryOperation(t *testing.T) {
	t.Parallel()
	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			if testing.Short() && p.name != fullProfile {
				t.Skip("-short runs this through the plugin on " + fullProfile + " alone; TestEveryOperation runs this profile in process")
			}
			t.Parallel()
			r := newPluginRig(t, p, everyOperationWorld()...)
			ctx := testContext(t)

			info, err := r.drv.Info(ctx)
			require.NoError(t, err)
			assert.Equal(t, "vboxmanage", info.Name)
			assert.Equal(t, hypervisor.ContractVersion, info.ContractVersion)
			assert.Equal(t, "VirtualBox "+p.version, info.Hypervisor)
			assert.True(t, info.Capabilities.Has(hypervisor.CapStopEmergency), "every profile is 5.1 or later")
			assert.True(t, info.Capabilities.Has(hypervisor.CapGuestExec), "guest credentials are configured")
			assert.False(t, info.Capabilities.Has(hypervisor.CapWatch))
			proto, err := r.plugin.Protocol(ctx)
			require.NoError(t, err)
			assert.Equal(t, 2, proto)

			everyOperation(t, r)

			_, err = r.drv.Status(ctx, "nope")
			assert.True(t, hypervisor.IsNotFound(err), "%v", err)
			var he *hypervisor.Error
			require.ErrorAs(t, err, &he)
			assert.Equal(t, hypervisor.OpStatus, he.Op)
			assert.Equal(t, "nope", he.VM)
			assert.Equal(t, "Could not find a registered machine named 'nope'", he.Message)
			err = r.drv.Restore(ctx, vmName, "no-such-snapshot")
			assert.True(t, hypervisor.IsNotFound(err), "%v", err)
			assert.Contains(t, err.Error(), "Could not find a snapshot named 'no-such-snapshot'")
			require.NoError(t, r.drv.Start(ctx, vmName))
			err = r.drv.Restore(ctx, vmName, "clean")
			assert.Equal(t, hypervisor.CodeInvalidState, hypervisor.CodeOf(err), "%v", err)
			_, err = r.drv.Watch(ctx, vmName)
			assert.True(t, hypervisor.IsUnsupported(err), "%v", err)

			assert.Equal(t, 1, r.argvCount(t, "--version"), "one plugin process probes VirtualBox once")
		})
	}
}

// noErrorSurfaced checks that nothing an operator sees says anything went
// wrong: the report, the quarantine and every line the core, the host and
// the plugin logged at warning level or above.
func noErrorSurfaced(t *testing.T, r *rig, rep *lifecycle.OpReport, err error) {
	t.Helper()
	require.NoError(t, err)
	require.NotNil(t, rep)
	assert.Empty(t, rep.Error)
	assert.False(t, rep.Quarantined)
	for _, line := range strings.Split(r.logs.String(), "\n") {
		assert.NotContains(t, line, "[ERROR]")
		assert.NotContains(t, line, "[WARN]")
	}
}

// The scenario the project exists for, as production runs it: a task's
// VM is powered off, its VM process keeps the session "unlocking" for a
// while, and the core's restore must end in a restored VM with no error.
// The core's release confirmation waits for the Status the driver reads
// from the lock-free listing to say unlocked, so VirtualBox is never even
// asked too early; where the listing cannot show the session, the
// driver's own retries absorb VirtualBox's refusals; where the VM process
// never exits, the core's active unlock has the driver kill it.
func TestPluginLingeringLockEndsInARestoreWithoutError(t *testing.T) {
	t.Parallel()
	const linger = 1200 * time.Millisecond
	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			// unlock.grace at its default (5s): the exiting VM process gets
			// the time it needs and is not killed.
			// Three commands meet the session before it can end: the status
			// read here, the core's and the cleanup's wait-off see it held
			// however slowly a busy machine runs them.
			r := newPluginRig(t, p, withSetting("unlock.grace", ""),
				withTiming(func(tm *vboxsim.Timing) { tm.Unlock, tm.UnlockSeen = vboxsim.Duration(linger), 3 }))
			ctx := plugintest.Context(t, time.Minute)
			m := lifecycle.New(lifecycle.Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Info, Output: r.logs})})
			vm := managedVM(r, vmName)

			rep, err := m.Start(ctx, vm)
			noErrorSurfaced(t, r, rep, err)
			require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff), "the task powers its VM off")
			stopped := time.Now()
			st, err := r.drv.Status(ctx, vmName)
			require.NoError(t, err)
			require.Equal(t, hypervisor.PowerOff, st.Power)
			require.Equal(t, hypervisor.LockLocked, st.Lock, "the VM process still holds the session")

			rep, err = m.Restore(ctx, vm)
			noErrorSurfaced(t, r, rep, err)
			assert.Equal(t, []string{"stop: already off", "wait for release: unlocked", "restore clean: done", "verify: ok"}, stepNames(rep))
			assert.GreaterOrEqual(t, time.Since(stopped), linger-200*time.Millisecond, "the release was waited for")
			require.NotNil(t, rep.Final)
			assert.Equal(t, hypervisor.PowerOff, rep.Final.Power)
			assert.Equal(t, hypervisor.LockUnlocked, rep.Final.Lock)
			assert.Equal(t, "clean", rep.Final.CurrentSnapshot)
			assert.Equal(t, 1, r.argvCount(t, "snapshot", "restore"), "nothing reached VirtualBox before the session was free")

			// The next task: the native cleanup powers off, waits out the
			// same lingering session and restores, in one call.
			rep, err = m.Start(ctx, vm)
			noErrorSurfaced(t, r, rep, err)
			rep, err = m.Cleanup(ctx, vm)
			noErrorSurfaced(t, r, rep, err)
			assert.Equal(t, lifecycle.PathNative, rep.Path)
			assert.Equal(t, []string{"driver: poweroff: done", "driver: wait-off: done", "driver: wait-unlock: done",
				"driver: restore clean: done", "native cleanup: done", "verify: ok"}, stepNames(rep))
			assert.Equal(t, 2, r.argvCount(t, "snapshot", "restore"))
			st = r.waitStatus(t, vmName, offAndUnlocked)
			assert.Equal(t, "clean", st.CurrentSnapshot)
		})
	}

	t.Run("session hidden from the listing", func(t *testing.T) {
		t.Parallel()
		// The hidden session is met only by the restores it refuses: two
		// of them, however slowly a busy machine runs them.
		r := newPluginRig(t, profiles[1],
			withTiming(func(tm *vboxsim.Timing) { tm.Unlock, tm.UnlockSeen = vboxsim.Duration(linger), 2 }),
			withFaults(func(f *vboxsim.Faults) { f.HideSessionName = true }))
		ctx := plugintest.Context(t, time.Minute)
		m := lifecycle.New(lifecycle.Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Info, Output: r.logs})})
		vm := managedVM(r, vmName)
		rep, err := m.Start(ctx, vm)
		noErrorSurfaced(t, r, rep, err)
		require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))

		rep, err = m.Restore(ctx, vm)
		noErrorSurfaced(t, r, rep, err)
		assert.Equal(t, []string{"stop: already off", "restore clean: done", "verify: ok"}, stepNames(rep),
			"the core saw an unlocked VM and went straight to the restore")
		assert.Greater(t, r.argvCount(t, "snapshot", "restore"), 1, "VirtualBox refused while the session was held")
		assert.Equal(t, 1, rep.Steps[1].Attempts, "the driver waited the refusals out itself")
		assert.Contains(t, r.logs.String(), "is already locked for a session (or being unlocked)",
			"the refusals are in the debug log, for whoever wants to know")
	})

	t.Run("VM process that never exits", func(t *testing.T) {
		t.Parallel()
		r := newPluginRig(t, profiles[3],
			withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) }),
			withSetting("unlock.grace", `"300ms"`))
		ctx := plugintest.Context(t, time.Minute)
		m := lifecycle.New(lifecycle.Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Info, Output: r.logs})})
		vm := managedVM(r, vmName, func(s *config.Lifecycle) { s.ReleaseTimeout = 500 * time.Millisecond })
		rep, err := m.Start(ctx, vm)
		noErrorSurfaced(t, r, rep, err)
		require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))

		rep, err = m.Restore(ctx, vm)
		noErrorSurfaced(t, r, rep, err)
		assert.Equal(t, []string{"stop: already off", "wait for release: deadline passed", "unlock: unlocked",
			"restore clean: done", "verify: ok"}, stepNames(rep))
		assert.Equal(t, 1, r.argvCount(t, "--type", "emergencystop"), "the driver's unlock killed the VM process")
		require.NotNil(t, rep.Final)
		assert.Equal(t, hypervisor.PowerOff, rep.Final.Power, "a powered-off VM whose process is killed stays powered off")
	})
}

// A VBoxManage that hangs is killed at its own deadline (timeouts.poweroff
// here) and at the caller's, whose deadline crosses the process boundary
// with the call; either way no VBoxManage is left running.
func TestPluginHangingVBoxManageIsKilledAtItsDeadline(t *testing.T) {
	t.Parallel()
	t.Run("own deadline", func(t *testing.T) {
		t.Parallel()
		hangingPowerOff(t, newPluginRig(t, profiles[1], hangingPowerOffWorld()...))
	})
	t.Run("caller's deadline", func(t *testing.T) {
		t.Parallel()
		slow := guestVM(vmName, vmUUID)
		long := vboxsim.Duration(time.Minute)
		slow.Restore = &long
		r := newPluginRig(t, profiles[2], withVMs(slow))
		// The plugin is launched first, so that the deadline is the call's.
		_, err := r.drv.Status(plugintest.Context(t, time.Minute), vmName)
		require.NoError(t, err)
		// The deadline must leave the call time to reach VBoxManage: on a
		// busy machine half a second may not, so a call whose deadline
		// passed before it got there is made again with twice the time.
		var restores []vboxsim.Invocation
		for deadline := 500 * time.Millisecond; len(restores) == 0; deadline *= 2 {
			require.Less(t, deadline, 30*time.Second, "no restore ever reached VBoxManage")
			start := time.Now()
			err := r.drv.Restore(plugintest.Context(t, deadline), vmName, "clean")
			elapsed := time.Since(start)
			assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
			assert.Less(t, elapsed, deadline+time.Second)
			for _, inv := range r.sim.Invocations(t) {
				if containsSeq(inv.Args, []string{"snapshot", "restore"}) {
					restores = append(restores, inv)
				}
			}
		}
		require.Len(t, restores, 1)
		assert.Eventually(t, func() bool { return !plugintest.Alive(restores[0].PID) }, 30*time.Second, 20*time.Millisecond,
			"the restore's VBoxManage (pid %d) is killed", restores[0].PID)
		st := r.waitStatus(t, vmName, offAndUnlocked)
		assert.Equal(t, hypervisor.PowerOff, st.Power, "a restore killed half-way leaves the VM as it was")
	})
}

func TestPluginAwkwardVMNames(t *testing.T) {
	t.Parallel()
	awkwardNames(t, newPluginRig)
}

// The password never reaches a command line, nor any log line of the
// host, the plugin or VBoxManage's runner, at the most verbose level; one
// given by environment variable reaches the plugin only through the
// host's allow-list.
func TestPluginPasswordNeverInArgvOrLogs(t *testing.T) {
	t.Run("password_file", func(t *testing.T) {
		passwordStaysSecret(t, newPluginRig(t, profiles[1]))
	})
	t.Run("password_env", func(t *testing.T) {
		t.Setenv("VBOX_TEST_GUEST_PW", guestPW)
		passwordStaysSecret(t, newPluginRig(t, profiles[3],
			withSetting("guest.password_file", ""),
			withSetting("guest.password_env", `"VBOX_TEST_GUEST_PW"`),
			withPluginEnv("VBOX_TEST_GUEST_PW")))
	})
}

// TestPluginNeedsTheEnvAllowList shows why config.toml names password_env
// in the plugin's env: without it the variable never reaches the plugin,
// which refuses its configuration and says so.
func TestPluginNeedsTheEnvAllowList(t *testing.T) {
	t.Setenv("VBOX_TEST_GUEST_PW", guestPW)
	r := newPluginRig(t, profiles[2],
		withSetting("guest.password_file", ""),
		withSetting("guest.password_env", `"VBOX_TEST_GUEST_PW"`))
	_, err := r.drv.Info(testContext(t))
	require.Error(t, err)
	assert.ErrorIs(t, err, hypervisor.ErrUnavailable)
	assert.Contains(t, err.Error(), "environment variable VBOX_TEST_GUEST_PW is not set in the plugin's environment")
	assert.NotContains(t, err.Error(), guestPW)
	assert.NotContains(t, r.logs.String(), guestPW)
}
