package libvirt_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// A domain of the test guest, restored to its running snapshot, resumes it
// on start, runs commands through the agent, takes files in and gives them
// back, and powers off; a cleanup brings it back, and a second cleanup has
// nothing to do.
func TestRestoreStartExecCopyCleanup(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	d := r.driver(t)
	ctx := plugintest.Context(t, 3*time.Minute)

	st, err := d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power, "%+v", st)
	assert.Equal(t, "ready", st.CurrentSnapshot)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)

	require.NoError(t, d.Restore(ctx, "vm1", "ready"))
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerSaved, st.Power, "a domain restored to a running snapshot resumes it: %+v", st)

	begun := time.Now()
	require.NoError(t, d.Start(ctx, "vm1"))
	t.Logf("resumed in %s", time.Since(begun))
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power, "%+v", st)
	assert.Equal(t, "running (from snapshot)", st.Raw)
	assert.Equal(t, hypervisor.LockLocked, st.Lock)

	res, err := d.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}})
	require.NoError(t, err)
	assert.Equal(t, 3, res.ExitCode)
	assert.Equal(t, "out\n", string(res.Stdout))
	assert.Equal(t, "err\n", string(res.Stderr))

	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(i * 7)
	}
	src := filepath.Join(t.TempDir(), "in")
	require.NoError(t, os.WriteFile(src, data, 0o644))
	require.NoError(t, d.CopyIn(ctx, "vm1", src, "/tmp/blob"))
	dst := filepath.Join(t.TempDir(), "out")
	require.NoError(t, d.CopyOut(ctx, "vm1", "/tmp/blob", dst))
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	assert.Equal(t, data, got)

	res2, err := d.Cleanup(ctx, "vm1", hypervisor.CleanupRequest{Restore: true})
	require.NoError(t, err)
	t.Logf("cleanup: %+v", res2.Steps)
	assert.NotEmpty(t, res2.Steps)
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerSaved, st.Power, "%+v", st)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	res2, err = d.Cleanup(ctx, "vm1", hypervisor.CleanupRequest{Restore: true})
	require.NoError(t, err)
	assert.Empty(t, res2.Steps, "a clean domain needs no cleanup")

	// The snapshot really is resumed: the file copied in is gone.
	require.NoError(t, d.Start(ctx, "vm1"))
	res, err = d.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "cat", Args: []string{"/tmp/blob"}})
	require.NoError(t, err)
	assert.NotEqual(t, 0, res.ExitCode, "the guest's files are the snapshot's")
	require.NoError(t, d.Stop(ctx, "vm1", hypervisor.StopPowerOff))
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "%+v", st)
}
