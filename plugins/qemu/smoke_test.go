package qemu_test

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

// A VM of the test guest resumed from its snapshot runs commands through
// the agent, takes files in and gives them back, and powers off.
func TestResumeExecCopyPowerOff(t *testing.T) {
	t.Parallel()
	r := newRig(t, guestVM("vm1", "ready"))
	d := r.driver(t)
	ctx := plugintest.Context(t, 2*time.Minute)

	st, err := d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerSaved, st.Power, "a VM at a running snapshot resumes it: %+v", st)
	assert.Equal(t, "ready", st.CurrentSnapshot)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)

	begun := time.Now()
	require.NoError(t, d.Start(ctx, "vm1"))
	t.Logf("resumed in %s", time.Since(begun))
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power, "%+v", st)
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

	require.NoError(t, d.Stop(ctx, "vm1", hypervisor.StopPowerOff))
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power, "%+v", st)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
}
