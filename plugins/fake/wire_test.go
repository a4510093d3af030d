package fake_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// These tests run the fake as the real plugin binary, through the plugin
// host and the gRPC adapters, the way every other part of sandbox uses it.

func wirePlugin(t *testing.T, table string) *host.Plugin {
	t.Helper()
	dir := t.TempDir()
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"fake": {AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: fakeBinary(t)}},
		File:    filepath.Join(dir, "config.toml"),
		Data:    []byte("[plugins.fake.config]\n" + table),
		Logger:  hclog.NewNullLogger(),
	})
	t.Cleanup(h.Close)
	p, err := h.Plugin("fake")
	require.NoError(t, err)
	return p
}

const wireWorld = `
[plugins.fake.config.timing]
start = "20ms"
acpi_shutdown = "20ms"
poweroff = "20ms"
emergency = "5ms"
restore = "10ms"
unlock_after_stop = "20ms"
guest_ready = "0s"
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.locked]
state = "off"
snapshots = ["clean"]
locked = true
[plugins.fake.config.vms.slow]
[plugins.fake.config.vms.slow.faults]
slow = "5s"
[plugins.fake.config.vms.flaky]
snapshots = ["clean"]
[plugins.fake.config.vms.flaky.faults]
status_failures = 1
restore_failures = 1
`

func waitPower(t *testing.T, p *host.Plugin, vm string, want hypervisor.PowerState) hypervisor.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch, err := p.Watch(ctx, vm)
	require.NoError(t, err)
	for st := range ch {
		if st.Power == want {
			return st
		}
	}
	t.Fatalf("%s never became %s", vm, want)
	return hypervisor.Status{}
}

func TestEveryOperationThroughThePluginProcess(t *testing.T) {
	p := wirePlugin(t, wireWorld)
	ctx := context.Background()

	d, err := p.Describe(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, d.Protocol)
	assert.Equal(t, hypervisor.AllCapabilities, d.Info.Capabilities)

	vms, err := p.ListVMs(ctx)
	require.NoError(t, err)
	assert.Len(t, vms, 4)

	st, err := p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power)
	assert.Equal(t, hypervisor.LockLocked, st.Lock)
	assert.Equal(t, "clean", st.CurrentSnapshot)
	assert.False(t, st.StateChanged.IsZero())

	// Guest operations on the running VM.
	src := filepath.Join(t.TempDir(), "sample.bin")
	require.NoError(t, os.WriteFile(src, []byte("X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"), 0o600))
	require.NoError(t, p.CopyIn(ctx, "vm1", src, "/samples/sample.bin"))
	res, err := p.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "scan", Args: []string{"/samples/sample.bin"}, Timeout: 5 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, 1, res.ExitCode)
	assert.Contains(t, string(res.Stdout), "infected")
	res, err = p.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "no-such-tool"})
	require.NoError(t, err)
	assert.Equal(t, 127, res.ExitCode)
	assert.NotEmpty(t, res.Stderr)
	dst := filepath.Join(t.TempDir(), "back.bin")
	require.NoError(t, p.CopyOut(ctx, "vm1", "/samples/sample.bin", dst))
	back, err := os.ReadFile(dst)
	require.NoError(t, err)
	assert.Contains(t, string(back), "EICAR")

	// Stop by each method, unlock, restore, start, native cleanup.
	require.NoError(t, p.Stop(ctx, "vm1", hypervisor.StopACPI))
	waitPower(t, p, "vm1", hypervisor.PowerOff)
	require.NoError(t, p.Unlock(ctx, "vm1"))
	st, err = p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	require.NoError(t, p.Restore(ctx, "vm1", ""))
	require.NoError(t, p.Start(ctx, "vm1"))
	waitPower(t, p, "vm1", hypervisor.PowerRunning)
	require.NoError(t, p.Stop(ctx, "vm1", hypervisor.StopPowerOff))
	waitPower(t, p, "vm1", hypervisor.PowerOff)
	require.NoError(t, p.Unlock(ctx, "vm1"))
	require.NoError(t, p.Start(ctx, "vm1"))
	waitPower(t, p, "vm1", hypervisor.PowerRunning)
	require.NoError(t, p.Stop(ctx, "vm1", hypervisor.StopEmergency))
	waitPower(t, p, "vm1", hypervisor.PowerAborted)
	cr, err := p.Cleanup(ctx, "vm1", hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	require.NoError(t, err)
	require.NotEmpty(t, cr.Steps)
	st, err = p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
}

func TestEveryErrorCodeThroughThePluginProcess(t *testing.T) {
	p := wirePlugin(t, wireWorld)
	ctx := context.Background()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()

	for _, tc := range []struct {
		name string
		code hypervisor.Code
		call func() error
	}{
		{"unknown VM is not found", hypervisor.CodeNotFound, func() error { _, err := p.Status(ctx, "ghost"); return err }},
		{"unknown snapshot is not found", hypervisor.CodeNotFound, func() error { return p.Restore(ctx, "locked", "nope") }},
		{"start of a VM whose session is held is locked", hypervisor.CodeLocked, func() error { return p.Start(ctx, "locked") }},
		{"restore of a running VM is invalid state", hypervisor.CodeInvalidState, func() error { return p.Restore(ctx, "vm1", "clean") }},
		{"a slow call past its deadline times out", hypervisor.CodeTimeout, func() error { _, err := p.Status(short, "slow"); return err }},
		{"an unreachable hypervisor is unavailable", hypervisor.CodeUnavailable, func() error { _, err := p.Status(ctx, "flaky"); return err }},
		{"a failed restore is failed", hypervisor.CodeFailed, func() error { return p.Restore(ctx, "flaky", "clean") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var he *hypervisor.Error
			require.ErrorAs(t, err, &he)
			assert.Equal(t, tc.code, he.Code, "%v", err)
			assert.NotEmpty(t, he.VM)
			assert.NotEmpty(t, he.Op)
			assert.ErrorIs(t, err, tc.code.Sentinel())
			assert.NotErrorIs(t, err, host.ErrPluginExited)
		})
	}

	t.Run("an undeclared capability is unsupported", func(t *testing.T) {
		narrow := wirePlugin(t, `capabilities = ["stop.poweroff"]`+"\n"+wireWorld)
		err := narrow.Unlock(ctx, "vm1")
		assert.ErrorIs(t, err, hypervisor.ErrUnsupported)
		assert.ErrorIs(t, narrow.Stop(ctx, "vm1", hypervisor.StopACPI), hypervisor.ErrUnsupported)
	})
}

func TestAFakeThatExitsMidOperationIsRelaunched(t *testing.T) {
	stateDir := t.TempDir()
	p := wirePlugin(t, "state_dir = "+quote(stateDir)+"\n"+wireWorld+`
[plugins.fake.config.vms.vm1.faults]
exit_during = ["poweroff"]
`)
	ctx := context.Background()
	_, err := p.Status(ctx, "vm1")
	require.NoError(t, err)
	first := p.Pid()

	err = p.Stop(ctx, "vm1", hypervisor.StopPowerOff)
	require.ErrorIs(t, err, host.ErrPluginExited)
	assert.ErrorIs(t, err, hypervisor.ErrUnavailable)

	st := waitPower(t, p, "vm1", hypervisor.PowerOff)
	assert.Equal(t, hypervisor.PowerOff, st.Power, "the relaunched plugin found the power-off under way, as a hypervisor keeps state")
	assert.NotEqual(t, first, p.Pid())
}

func quote(s string) string { return `"` + filepath.ToSlash(s) + `"` }
