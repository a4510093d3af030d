package vboxmanage_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestInfoCapabilitiesPerVersion(t *testing.T) {
	all := []hypervisor.Capability{
		hypervisor.CapList, hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapStopEmergency,
		hypervisor.CapUnlock, hypervisor.CapRestore, hypervisor.CapCleanup, hypervisor.CapLockState,
		hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec, hypervisor.CapGuestCopyOut,
	}
	without := func(drop ...hypervisor.Capability) hypervisor.Capabilities {
		var out []hypervisor.Capability
	next:
		for _, c := range all {
			for _, d := range drop {
				if c == d {
					continue next
				}
			}
			out = append(out, c)
		}
		return hypervisor.NewCapabilities(out...)
	}
	cases := []struct {
		version string
		opts    []rigOption
		want    hypervisor.Capabilities
	}{
		{"4.3.40r117993", nil, hypervisor.NewCapabilities(hypervisor.CapList, hypervisor.CapStopACPI, hypervisor.CapStopPowerOff, hypervisor.CapRestore)},
		{"5.0.40r115130", nil, without(hypervisor.CapStopEmergency)},
		{"5.1.38r122592", nil, without()},
		{"6.1.34_Ubuntur150636", nil, without()},
		{"7.0.14r161095", nil, without()},
		{"7.1.0_BETA1r164697", nil, without()},
		{"7.0.14r161095", []rigOption{withSetting("guest.username", ""), withSetting("guest.password_file", "")},
			without(hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec, hypervisor.CapGuestCopyOut)},
	}
	for _, c := range cases {
		t.Run(c.version, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, profile{version: c.version, host: "linux"}, c.opts...)
			info, err := r.drv.Info(testContext(t))
			require.NoError(t, err)
			assert.Equal(t, c.want, info.Capabilities)
			assert.Equal(t, "vboxmanage", info.Name)
			assert.Equal(t, hypervisor.ContractVersion, info.ContractVersion)
			assert.Equal(t, "VirtualBox "+c.version, info.Hypervisor)
			_, _ = r.drv.Info(plugintest.Context(t, time.Second))
			assert.Equal(t, 1, r.argvCount(t, "--version"), "the version is probed once")
		})
	}
}

// TestEveryOperation runs each operation against every simulated version
// and host style.
func TestEveryOperation(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			everyOperation(t, newRig(t, p, everyOperationWorld()...))
		})
	}
}

// everyOperationWorld is the world everyOperation expects: the guest VM
// and a bystander, with timings short enough to wait out. The session
// that lingers after a power-off stays until two listings have shown it,
// so that the status read after Stop, and the cleanup's wait-off, see it
// held however long a busy machine takes between the power-off and the
// look; the grace before Unlock kills its holder, and the wait for a
// powered-off VM to be off before it is killed, are long enough that
// neither kill comes on a machine of any speed, and the steps stay the
// same.
func everyOperationWorld() []rigOption {
	return []rigOption{
		withVMs(guestVM(vmName, vmUUID), vboxsim.NewVM("other vm", "4f8a3c1e-2b7d-4c0a-9e51-7d2c8b9a6f10")),
		withTiming(func(tm *vboxsim.Timing) {
			tm.ACPIShutdown = vboxsim.Duration(150 * time.Millisecond)
			tm.Unlock = vboxsim.Duration(300 * time.Millisecond)
			tm.UnlockSeen = 2
			tm.GuestReady = vboxsim.Duration(200 * time.Millisecond)
		}),
		withSetting("unlock.grace", `"20s"`),
		withSetting("cleanup.stop_wait", `"1m"`),
	}
}

// everyOperation drives every operation of the contract on r's driver,
// in process or through the plugin, and checks what reached VBoxManage.
func everyOperation(t *testing.T, r *rig) {
	ctx := testContext(t)
	d := r.drv

	vms, err := d.ListVMs(ctx)
	require.NoError(t, err)
	assert.Equal(t, []hypervisor.VM{
		{Name: vmName, ID: vmUUID, Power: hypervisor.PowerOff},
		{Name: "other vm", ID: "4f8a3c1e-2b7d-4c0a-9e51-7d2c8b9a6f10", Power: hypervisor.PowerOff},
	}, vms, "the listing carries each VM's state")

	st, err := d.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, "poweroff", st.Raw)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	assert.Equal(t, "clean", st.CurrentSnapshot)
	assert.Equal(t, time.Date(2024, 3, 5, 9, 58, 41, 0, time.UTC), st.StateChanged)

	stopsBefore := r.argvCount(t, "controlvm") + r.argvCount(t, "emergencystop")
	for _, m := range hypervisor.StopMethods {
		require.NoError(t, d.Stop(ctx, vmName, m), "stopping a stopped VM with %s", m)
	}
	assert.Equal(t, stopsBefore, r.argvCount(t, "controlvm")+r.argvCount(t, "emergencystop"), "no stop command reaches a stopped VM")

	require.NoError(t, d.Start(ctx, vmName))
	st, err = d.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power)
	assert.Equal(t, hypervisor.LockLocked, st.Lock)
	require.NoError(t, d.Start(ctx, vmName), "starting a running VM is a no-op")

	// Guest operations, right after start: the guest needs a moment.
	host := filepath.Join(t.TempDir(), "sample.bin")
	require.NoError(t, os.WriteFile(host, []byte("MZ\x00\x01sample"), 0o644))
	require.NoError(t, d.CopyIn(ctx, vmName, host, `C:\Users\analyst\Desktop\sample.exe`))
	res, err := d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "/bin/cat", Args: []string{`C:\Users\analyst\Desktop\sample.exe`}})
	require.NoError(t, err)
	assert.Equal(t, 0, res.ExitCode)
	assert.Equal(t, "MZ\x00\x01sample", string(res.Stdout))
	res, err = d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: `C:\tools\exit.exe`, Args: []string{"7"}})
	require.NoError(t, err, "a non-zero exit is a result")
	assert.Equal(t, 7, res.ExitCode)
	res, err = d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "stderr", Args: []string{"VBoxManage: error: spoofed"}})
	require.NoError(t, err, "guest stderr is data")
	assert.Equal(t, "VBoxManage: error: spoofed\n", string(res.Stderr))
	out := filepath.Join(t.TempDir(), "back.bin")
	require.NoError(t, d.CopyOut(ctx, vmName, `C:\Users\analyst\Desktop\sample.exe`, out))
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	assert.Equal(t, "MZ\x00\x01sample", string(data))

	// ACPI: the guest shuts down by itself.
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopACPI))
	r.waitStatus(t, vmName, offAndUnlocked)

	// Power-off: off at once, the session lingers, Unlock waits it out.
	require.NoError(t, d.Start(ctx, vmName))
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopPowerOff))
	st, err = d.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, hypervisor.LockLocked, st.Lock, "the VM process still holds the session")
	require.NoError(t, d.Unlock(ctx, vmName))
	st, err = d.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	require.NoError(t, d.Unlock(ctx, vmName), "unlocking an unlocked VM is a no-op")

	require.NoError(t, d.Restore(ctx, vmName, "clean"))
	require.NoError(t, d.Restore(ctx, vmName, ""))
	st, err = d.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, "clean", st.CurrentSnapshot)
	assert.True(t, st.Power.IsOff())

	// Emergency stop kills the VM process.
	require.NoError(t, d.Start(ctx, vmName))
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopEmergency))
	st = r.waitStatus(t, vmName, offAndUnlocked)
	assert.Equal(t, hypervisor.PowerAborted, st.Power)

	// Native cleanup of a running VM.
	require.NoError(t, d.Start(ctx, vmName))
	result, err := d.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	require.NoError(t, err)
	assert.Equal(t, []string{"poweroff", "wait-off", "wait-unlock", "restore clean"}, actions(result))
	r.waitStatus(t, vmName, offAndUnlocked)

	for _, req := range []hypervisor.CleanupRequest{{Restore: true, Snapshot: "clean"}, {Restore: true}, {}} {
		result, err = d.Cleanup(ctx, vmName, req)
		require.NoError(t, err)
		assert.Empty(t, result.Steps, "cleaning a clean VM does nothing (%+v)", req)
	}
	require.NoError(t, d.Start(ctx, vmName))
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopPowerOff))
	r.waitStatus(t, vmName, offAndUnlocked)
	result, err = d.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	require.NoError(t, err)
	assert.Equal(t, []string{"restore clean"}, actions(result), "a VM that ran since is restored again")
	mustRunSim(t, r, "startvm", vmName, "--type", "headless")
	mustRunSim(t, r, "controlvm", vmName, "poweroff")
	r.waitStatus(t, vmName, offAndUnlocked)
	result, err = d.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	require.NoError(t, err)
	assert.Equal(t, []string{"restore clean"}, actions(result), "so is one someone else ran")

	// The other VM was never touched by anything but reads.
	st, err = d.Status(ctx, "other vm")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power)
}

func actions(r hypervisor.CleanupResult) []string {
	var out []string
	for _, s := range r.Steps {
		out = append(out, s.Action)
	}
	return out
}

func TestErrorsAreClassified(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2])
	ctx := testContext(t)
	d := r.drv
	code := func(err error) hypervisor.Code {
		require.Error(t, err)
		return hypervisor.CodeOf(err)
	}

	_, err := d.Status(ctx, "nope")
	assert.Equal(t, hypervisor.CodeNotFound, code(err))
	assert.Contains(t, err.Error(), "Could not find a registered machine named 'nope'")
	assert.Equal(t, hypervisor.CodeNotFound, code(d.Start(ctx, "nope")))
	assert.Equal(t, hypervisor.CodeNotFound, code(d.Stop(ctx, "nope", hypervisor.StopPowerOff)))
	assert.Equal(t, hypervisor.CodeNotFound, code(d.Restore(ctx, "nope", "")))
	assert.Equal(t, hypervisor.CodeNotFound, code(d.Unlock(ctx, "nope")))
	assert.Equal(t, hypervisor.CodeNotFound, code(d.Restore(ctx, vmName, "no-such-snapshot")))
	assert.Contains(t, d.Restore(ctx, vmName, "no-such-snapshot").Error(), "Could not find a snapshot named 'no-such-snapshot'")
	assert.Equal(t, hypervisor.CodeUnsupported, code(d.Stop(ctx, vmName, "kick")))

	require.NoError(t, d.Start(ctx, vmName))
	err = d.Restore(ctx, vmName, "clean")
	assert.Equal(t, hypervisor.CodeInvalidState, code(err))
	assert.Contains(t, err.Error(), "Cannot delete the current state of the running machine (machine state: Running)")
	assert.Equal(t, hypervisor.CodeInvalidState, code(d.Unlock(ctx, vmName)))
	r.sim.Update(t, func(w *vboxsim.World) { w.Find(vmName).State = "paused" })
	assert.Equal(t, hypervisor.CodeInvalidState, code(d.Stop(ctx, vmName, hypervisor.StopACPI)), "ACPI while paused")
	assert.Equal(t, hypervisor.CodeInvalidState, code(d.Start(ctx, vmName)), "a paused VM is not started")
	require.NoError(t, d.Stop(ctx, vmName, hypervisor.StopPowerOff))
	r.waitStatus(t, vmName, offAndUnlocked)

	r.sim.Update(t, func(w *vboxsim.World) {
		vm := w.Find(vmName)
		vm.Snapshots, vm.Current = nil, ""
	})
	err = d.Restore(ctx, vmName, "")
	assert.Equal(t, hypervisor.CodeNotFound, code(err))
	assert.Contains(t, err.Error(), "This machine does not have any snapshots")
}

func TestStartFailures(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[1], withFaults(func(f *vboxsim.Faults) { f.StartFailExit0 = true }))
	ctx := testContext(t)
	err := r.drv.Start(ctx, vmName)
	require.Error(t, err, "an error: line fails a start that exited 0")
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "VT-x is not available (VERR_VMX_NO_VMX)")

	r.sim.Update(t, func(w *vboxsim.World) {
		w.Config.Faults.StartFailExit0 = false
		w.Config.Faults.StartExit1 = true
	})
	require.NoError(t, r.drv.Start(ctx, vmName), "the success line wins over exit status 1")
	st, err := r.drv.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power)
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("VBoxManage missing", func(t *testing.T) {
		t.Parallel()
		d := newDriverAt(t, filepath.Join(t.TempDir(), "no", "VBoxManage"))
		_, err := d.Info(plugintest.Context(t, 5*time.Second))
		require.Error(t, err)
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err))
		assert.True(t, errors.Is(err, hypervisor.ErrUnavailable))
		assert.Contains(t, err.Error(), "configured path")
		_, err = d.Status(plugintest.Context(t, 5*time.Second), vmName)
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err))
	})
	t.Run("VBoxManage broken", func(t *testing.T) {
		t.Parallel()
		broken := filepath.Join(t.TempDir(), "VBoxManage")
		require.NoError(t, os.WriteFile(broken, []byte("not a program"), 0o644))
		d := newDriverAt(t, broken)
		_, err := d.Info(plugintest.Context(t, 5*time.Second))
		require.Error(t, err)
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err))
		assert.Contains(t, err.Error(), "VBoxManage at "+broken+" does not work")
	})
	t.Run("VBoxSVC down", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[1], withFaults(func(f *vboxsim.Faults) { f.ServiceDown = -1 }))
		_, err := r.drv.Status(testContext(t), vmName)
		require.Error(t, err)
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err))
		assert.Contains(t, err.Error(), "Failed to create the VirtualBox object!")
	})
	t.Run("VBoxSVC starting", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[1], withFaults(func(f *vboxsim.Faults) { f.ServiceDown = 1 }))
		st, err := r.drv.Status(testContext(t), vmName)
		require.NoError(t, err, "one refusal while VBoxSVC starts is retried")
		assert.Equal(t, hypervisor.PowerOff, st.Power)
	})
}

func TestTransientOutputIsRetried(t *testing.T) {
	t.Parallel()
	r := newRig(t, profile{version: "6.1.34_Ubuntur150636", host: "linux"}, withFaults(func(f *vboxsim.Faults) {
		f.AccessDenied = 2
		f.Garbage = 1
		f.Warnings = true
		f.EmptyVersion = 1
	}))
	ctx := testContext(t)
	info, err := r.drv.Info(ctx)
	require.NoError(t, err, "an empty version line and wrapper warnings are tolerated")
	assert.Equal(t, "VirtualBox 6.1.34_Ubuntur150636", info.Hypervisor)
	st, err := r.drv.Status(ctx, vmName)
	require.NoError(t, err, "garbage once and 'object is not ready' twice are retried")
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, 4, r.argvCount(t, "list", "--long", "vms"))
}

func TestHangingVBoxManageIsKilledAtItsDeadline(t *testing.T) {
	t.Parallel()
	hangingPowerOff(t, newRig(t, profiles[2], hangingPowerOffWorld()...))
}

// hangingPowerOffWorld makes every controlvm poweroff hang, with a short
// deadline for it: long enough that a busy machine has launched the
// VBoxManage and it has put the VM in stopping before it is killed, which
// the cleanup's expected steps rely on.
func hangingPowerOffWorld() []rigOption {
	return []rigOption{
		withFaults(func(f *vboxsim.Faults) { f.HangPowerOff = true }),
		withSetting("timeouts.poweroff", `"2s"`),
	}
}

// hangingPowerOff checks that a VBoxManage that hangs is killed at its
// deadline and that a cleanup gets past it.
func hangingPowerOff(t *testing.T, r *rig) {
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	start := time.Now()
	err := r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff)
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "did not finish within")
	// Killed at timeouts.poweroff (2 s), not left to hang until the test's
	// own bound; the slack is for a busy machine.
	assert.Less(t, elapsed, 30*time.Second)
	assert.GreaterOrEqual(t, elapsed, 2*time.Second, "not before its deadline either")
	require.Equal(t, "stopping", r.sim.VM(t, vmName).State, "the killed power-off left the VM stuck in stopping")
	for _, inv := range r.sim.Invocations(t) {
		if containsSeq(inv.Args, []string{"controlvm", "poweroff"}) {
			assert.False(t, plugintest.Alive(inv.PID), "the hung VBoxManage (pid %d) is gone", inv.PID)
		}
	}

	// Cleanup gets past the same hang: power-off is killed, the VM stuck
	// in stopping has its process killed, and the restore follows.
	result, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true})
	require.NoError(t, err)
	assert.Equal(t, []string{"wait-off", "emergencystop", "wait-off", "restore current"}, actions(result))
	st := r.waitStatus(t, vmName, offAndUnlocked)
	assert.Equal(t, "clean", st.CurrentSnapshot)
}

func TestConfigErrorsNameTheLine(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"unknown key":          "[plugins.vbox.config]\npath = \"/x\"\ntimeout = \"5s\"\n",
		"negative duration":    "[plugins.vbox.config]\n[plugins.vbox.config.timeouts]\nstart = \"-1s\"\n",
		"password in two ways": "[plugins.vbox.config.guest]\nusername = \"a\"\npassword_file = \"p\"\npassword_env = \"P\"\n",
		"no password":          "[plugins.vbox.config.guest]\nusername = \"a\"\n",
		"unreadable password":  "[plugins.vbox.config.guest]\nusername = \"a\"\npassword_file = \"missing\"\n",
		"busy polling":         "[plugins.vbox.config.retry]\ninitial = \"1ns\"\n",
	}
	want := map[string]string{
		"unknown key":          "config.toml:3: plugins.vbox.config.timeout: unknown key",
		"negative duration":    "config.toml:3: plugins.vbox.config.timeouts.start: must be a positive duration",
		"password in two ways": "config.toml:4: plugins.vbox.config.guest.password_env: set either",
		"no password":          "plugins.vbox.config.guest.password_file: is required with username",
		"unreadable password":  "config.toml:3: plugins.vbox.config.guest.password_file: cannot read the password",
		"busy polling":         "config.toml:2: plugins.vbox.config.retry.initial: must be at least 1ms",
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := newFromTOML(filepath.Join(dir, "config.toml"), text)
			require.Error(t, err)
			assert.Contains(t, err.Error(), want[name])
		})
	}
}

func TestPerVMGuestCredentials(t *testing.T) {
	t.Setenv("VBOX_TEST_PW", "other secret")
	vm := guestVM(vmName, vmUUID)
	vm.GuestUsers = map[string]string{"admin": "other secret"}
	r := newRig(t, profiles[2], withVMs(vm),
		withSetting("vms.win10-64-defender.guest.username", `"admin"`),
		withSetting("vms.win10-64-defender.guest.password_env", `"VBOX_TEST_PW"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	res, err := r.drv.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo", Args: []string{"per-vm"}})
	require.NoError(t, err)
	assert.Equal(t, "per-vm\n", string(res.Stdout))
	assert.Equal(t, 1, r.argvCount(t, "--username", "admin"))
}
