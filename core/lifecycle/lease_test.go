package lifecycle_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestLeaseHoldsTheVMAcrossOperations(t *testing.T) {
	w := fakeWorld(t, timing+`
[plugins.fake.config.vms.vm1]
state = "running"
snapshots = ["clean"]
`)
	ctx := plugintest.Context(t, 30*time.Second)
	vm := w.vm("vm1")
	lease, err := w.manager.Lease(ctx, vm)
	require.NoError(t, err)

	// Operations under the lease do not wait for the lease they run under.
	_, err = lease.EnsureStopped(ctx)
	require.NoError(t, err)
	_, err = lease.Start(ctx)
	require.NoError(t, err)

	// Anyone else waits for the whole sequence, not just one operation.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = w.manager.Stop(short, vm)
	require.Error(t, err, "a stop from outside the lease must wait for it")
	assert.ErrorIs(t, err, hypervisor.ErrTimeout)
	st, err := w.plugin.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.NotEqual(t, hypervisor.PowerOff, st.Power, "the outside stop must not have reached the VM")

	r, err := lease.Cleanup(ctx)
	require.NoError(t, err)
	finalIsClean(t, r, "clean")
	lease.Release()
	lease.Release() // harmless

	_, err = w.manager.Start(ctx, vm)
	require.NoError(t, err, "released: others get the VM")
}
