package fake

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func TestARawStateIsUnknownAndFrozen(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nraw_state = \"teleporting\"\nsnapshots = [\"clean\"]")
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerUnknown, st.Power)
	assert.Equal(t, "teleporting", st.Raw)
	requireCode(t, d.Start(testCtx(t), "a"), hypervisor.CodeInvalidState, hypervisor.OpStart, "a")
	requireCode(t, d.Restore(testCtx(t), "a", "clean"), hypervisor.CodeInvalidState, hypervisor.OpRestore, "a")
	requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff), hypervisor.CodeInvalidState, hypervisor.OpStop, "a")
	requireCode(t, d.Unlock(testCtx(t), "a"), hypervisor.CodeInvalidState, hypervisor.OpUnlock, "a")
	assert.Equal(t, st, status(t, d, "a"))
}

func TestAFakeWithoutViolationsKeepsTheRules(t *testing.T) {
	t.Parallel()
	d := newFake(t, "[vms.a]\nraw_state = \"teleporting\"\n[vms.b]\nsnapshots = [\"clean\"]")
	for _, v := range Violations {
		assert.False(t, d.breaks(v), v)
	}
	assert.Equal(t, hypervisor.PowerUnknown, status(t, d, "a").Power)
	assert.NoError(t, d.Stop(testCtx(t), "b", hypervisor.StopACPI))
	requireCode(t, d.Restore(testCtx(t), "b", "nope"), hypervisor.CodeNotFound, hypervisor.OpRestore, "b")
}

func TestViolationsBreakTheirRule(t *testing.T) {
	t.Parallel()
	d := newFake(t, `violations = ["unknown-as-off", "stop-off-fails", "failed-not-found", "unsupported-unlock"]
		[vms.a]
		raw_state = "teleporting"
		[vms.b]
		snapshots = ["clean"]`)
	assert.Equal(t, hypervisor.PowerOff, status(t, d, "a").Power)
	requireCode(t, d.Stop(testCtx(t), "b", hypervisor.StopACPI), hypervisor.CodeInvalidState, hypervisor.OpStop, "b")
	requireCode(t, d.Restore(testCtx(t), "b", "nope"), hypervisor.CodeFailed, hypervisor.OpRestore, "b")
	requireCode(t, d.Unlock(testCtx(t), "b"), hypervisor.CodeUnsupported, hypervisor.OpUnlock, "b")
	info, err := d.Info(testCtx(t))
	assert.NoError(t, err)
	assert.True(t, info.Capabilities.Has(hypervisor.CapUnlock), "still declared")
}
