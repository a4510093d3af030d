package hypervisor_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func TestErrorReadsAsOperationVMWhatAndMessage(t *testing.T) {
	err := hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpRestore, "win10",
		"The machine 'win10' is already locked for a session (or being unlocked)")
	assert.Equal(t, `restore "win10": locked by another session: The machine 'win10' is already locked for a session (or being unlocked)`, err.Error())
	assert.ErrorIs(t, err, hypervisor.ErrLocked)
	assert.True(t, hypervisor.CodeOf(err).Retryable())
}

func TestErrorKeepsItsCause(t *testing.T) {
	cause := errors.New("exit status 3")
	err := &hypervisor.Error{Code: hypervisor.CodeFailed, Op: "start", VM: "a", Message: "the VM process died", Err: cause}
	assert.Contains(t, err.Error(), "the VM process died: exit status 3")
	assert.ErrorIs(t, err, cause)
	assert.ErrorIs(t, err, hypervisor.ErrFailed)
}

func TestCodeOf(t *testing.T) {
	wrapped := fmt.Errorf("while cleaning: %w", hypervisor.NewError(hypervisor.CodeNotFound, "status", "x", "gone"))
	assert.Equal(t, hypervisor.CodeNotFound, hypervisor.CodeOf(wrapped))
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(context.DeadlineExceeded))
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(errors.New("plain")))
	both := errors.Join(hypervisor.ErrUnavailable, hypervisor.ErrLocked)
	for range 20 {
		assert.Equal(t, hypervisor.CodeLocked, hypervisor.CodeOf(both), "the same code every time")
	}
}

func TestFromContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	assert.NoError(t, hypervisor.FromContext(ctx, "stop", "a"))
	cancel()
	err := hypervisor.FromContext(ctx, "stop", "a")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
}

func TestCapabilitiesAndStates(t *testing.T) {
	caps := hypervisor.NewCapabilities(hypervisor.CapUnlock, hypervisor.CapList, hypervisor.CapUnlock)
	assert.Equal(t, "list,unlock", caps.String())
	assert.True(t, caps.Has(hypervisor.CapList))
	assert.Equal(t, hypervisor.CapStopEmergency, hypervisor.StopEmergency.Capability())
	assert.False(t, hypervisor.StopMethod("gentle").Valid())
	for _, p := range []hypervisor.PowerState{hypervisor.PowerOff, hypervisor.PowerSaved, hypervisor.PowerAborted} {
		assert.True(t, p.IsOff(), p)
	}
	assert.False(t, hypervisor.PowerUnknown.IsOff(), "unknown is never off")
	assert.False(t, hypervisor.PowerState("levitating").Valid())
}
