package fake

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// vmOp is one VM operation of the contract, called for its error only.
type vmOp struct {
	op   string
	cap  hypervisor.Capability // "" for the operations every driver has
	call func(ctx context.Context, d *Driver, vm string) error
}

func vmOps(t *testing.T) []vmOp {
	host := filepath.Join(t.TempDir(), "host")
	require.NoError(t, os.WriteFile(host, []byte("x"), 0o644))
	return []vmOp{
		{hypervisor.OpStatus, "", func(ctx context.Context, d *Driver, vm string) error {
			_, err := d.Status(ctx, vm)
			return err
		}},
		{hypervisor.OpStart, "", func(ctx context.Context, d *Driver, vm string) error { return d.Start(ctx, vm) }},
		{hypervisor.OpStop + " acpi", hypervisor.CapStopACPI, func(ctx context.Context, d *Driver, vm string) error {
			return d.Stop(ctx, vm, hypervisor.StopACPI)
		}},
		{hypervisor.OpStop + " poweroff", hypervisor.CapStopPowerOff, func(ctx context.Context, d *Driver, vm string) error {
			return d.Stop(ctx, vm, hypervisor.StopPowerOff)
		}},
		{hypervisor.OpStop + " emergency", hypervisor.CapStopEmergency, func(ctx context.Context, d *Driver, vm string) error {
			return d.Stop(ctx, vm, hypervisor.StopEmergency)
		}},
		{hypervisor.OpUnlock, hypervisor.CapUnlock, func(ctx context.Context, d *Driver, vm string) error { return d.Unlock(ctx, vm) }},
		{hypervisor.OpRestore, hypervisor.CapRestore, func(ctx context.Context, d *Driver, vm string) error {
			return d.Restore(ctx, vm, "")
		}},
		{hypervisor.OpCleanup, hypervisor.CapCleanup, func(ctx context.Context, d *Driver, vm string) error {
			_, err := d.Cleanup(ctx, vm, hypervisor.CleanupRequest{Restore: true})
			return err
		}},
		{hypervisor.OpCopyIn, hypervisor.CapGuestCopyIn, func(ctx context.Context, d *Driver, vm string) error {
			return d.CopyIn(ctx, vm, host, "/x")
		}},
		{hypervisor.OpExec, hypervisor.CapGuestExec, func(ctx context.Context, d *Driver, vm string) error {
			_, err := d.Exec(ctx, vm, hypervisor.ExecRequest{Path: "echo"})
			return err
		}},
		{hypervisor.OpCopyOut, hypervisor.CapGuestCopyOut, func(ctx context.Context, d *Driver, vm string) error {
			return d.CopyOut(ctx, vm, "/x", host+".out")
		}},
		{hypervisor.OpWatch, hypervisor.CapWatch, func(ctx context.Context, d *Driver, vm string) error {
			_, err := d.Watch(ctx, vm)
			return err
		}},
	}
}

// opName is the Error.Op an operation's row answers with.
func opName(op string) string {
	if len(op) > 4 && op[:4] == "stop" {
		return hypervisor.OpStop
	}
	return op
}

func TestEveryOperationOnAnUnknownVMIsNotFound(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]")
	for _, op := range vmOps(t) {
		t.Run(op.op, func(t *testing.T) {
			e := requireCode(t, op.call(testCtx(t), d, "ghost"), hypervisor.CodeNotFound, opName(op.op), "ghost")
			assert.Equal(t, "Could not find a registered machine named 'ghost'", e.Message)
		})
	}
	assert.Empty(t, d.Journal())
}

func TestUndeclaredCapabilitiesAnswerUnsupported(t *testing.T) {
	t.Parallel()
	// The capabilities of a legacy, version 1 driver.
	d := newFake(t, "capabilities = [\"stop.poweroff\", \"snapshot.restore\"]\n[vms.a]\nstate = \"running\"\nsnapshots = [\"clean\"]")
	info, err := d.Info(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, hypervisor.NewCapabilities(hypervisor.V1Capabilities...), info.Capabilities)
	_, err = d.ListVMs(testCtx(t))
	requireCode(t, err, hypervisor.CodeUnsupported, hypervisor.OpList, "")
	for _, op := range vmOps(t) {
		t.Run(op.op, func(t *testing.T) {
			err := op.call(testCtx(t), d, "a")
			if op.cap == "" || info.Capabilities.Has(op.cap) {
				assert.False(t, hypervisor.IsUnsupported(err), "declared, so never unsupported (§1.2): %v", err)
				return
			}
			requireCode(t, err, hypervisor.CodeUnsupported, opName(op.op), "a")
		})
	}
}

func TestEveryOperationAnswersTimeoutOnceItsDeadlineHasPassed(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"\nsnapshots = [\"clean\"]")
	for _, op := range vmOps(t) {
		t.Run(op.op, func(t *testing.T) {
			requireCode(t, op.call(expiredCtx(t), d, "a"), hypervisor.CodeTimeout, opName(op.op), "a")
		})
	}
	_, err := d.Info(expiredCtx(t))
	requireCode(t, err, hypervisor.CodeTimeout, hypervisor.OpInfo, "")
	_, err = d.ListVMs(expiredCtx(t))
	requireCode(t, err, hypervisor.CodeTimeout, hypervisor.OpList, "")
	assert.Equal(t, hypervisor.PowerRunning, status(t, d, "a").Power, "nothing happened")
}

func TestASlowVMAnswersTimeoutPromptlyAtTheDeadline(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nstate = \"running\"\nsnapshots = [\"clean\"]\n[vms.a.faults]\nslow = \"10s\"")
	for _, op := range vmOps(t) {
		t.Run(op.op, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			requireCode(t, op.call(plugintest.Context(t, 30*time.Millisecond), d, "a"), hypervisor.CodeTimeout, opName(op.op), "a")
			assert.Less(t, time.Since(start), 2*time.Second)
		})
	}
}

func TestASlowVMAnswersAfterItsDelay(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\n[vms.a.faults]\nslow = \"100ms\"")
	start := time.Now()
	assert.Equal(t, hypervisor.PowerOff, status(t, d, "a").Power)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
}

func TestListVMsIsSortedAndStable(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.zeta]\n[vms.alpha]\nstate = \"running\"\n[vms.mid]\nstate = \"saved\"")
	vms, err := d.ListVMs(testCtx(t))
	require.NoError(t, err)
	require.Len(t, vms, 3)
	assert.Equal(t, []string{"alpha", "mid", "zeta"}, []string{vms[0].Name, vms[1].Name, vms[2].Name})
	assert.Equal(t, hypervisor.PowerRunning, vms[0].Power)
	assert.Equal(t, hypervisor.PowerSaved, vms[1].Power)
	assert.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`, vms[0].ID)
	again, err := d.ListVMs(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, vms, again)
}

func TestConcurrentOperationsKeepTheWorldConsistent(t *testing.T) {
	t.Parallel()
	table := "[timing]\nstart = \"5ms\"\npoweroff = \"5ms\"\nacpi_shutdown = \"5ms\"\nemergency = \"1ms\"\nrestore = \"5ms\"\nunlock_after_stop = \"5ms\"\nguest_ready = \"0s\"\n"
	const n = 6
	for i := range n {
		table += fmt.Sprintf("[vms.vm%d]\nsnapshots = [\"clean\"]\n", i)
	}
	d := newFake(t, table)
	src := filepath.Join(t.TempDir(), "src")
	require.NoError(t, os.WriteFile(src, []byte("x"), 0o644))
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := range n {
		vm := fmt.Sprintf("vm%d", i)
		for w := range 3 { // several workers on the same VM, as a careless caller would
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 15 {
					switch (j + w) % 8 {
					case 0:
						_ = d.Start(ctx, vm)
					case 1:
						_, _ = d.Status(ctx, vm)
					case 2:
						_ = d.Stop(ctx, vm, hypervisor.StopMethods[j%3])
					case 3:
						_ = d.Restore(ctx, vm, "")
					case 4:
						_, _ = d.Exec(ctx, vm, hypervisor.ExecRequest{Path: "echo", Args: []string{vm}})
						_ = d.CopyIn(ctx, vm, src, "/f")
					case 5:
						wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
						if ch, err := d.Watch(wctx, vm); err == nil {
							for range ch {
							}
						}
						cancel()
					case 6:
						_ = d.Unlock(ctx, vm)
					case 7:
						_, _ = d.ListVMs(ctx)
					}
				}
			}()
		}
	}
	wg.Wait()
	for i := range n {
		vm := fmt.Sprintf("vm%d", i)
		_, err := d.Cleanup(ctx, vm, hypervisor.CleanupRequest{Restore: true})
		require.NoError(t, err, vm)
		st := status(t, d, vm)
		assert.Equal(t, hypervisor.PowerOff, st.Power, vm)
		assert.Equal(t, hypervisor.LockUnlocked, st.Lock, vm)
		assert.Equal(t, "clean", st.CurrentSnapshot, vm)
	}
}
