package libvirt_test

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The driver's waits on a guest, on real domains: a guest operation on a
// guest that is still booting waits for its agent until the caller's
// deadline (timeout) or guest.ready_wait, whichever comes first, and past
// ready_wait gives up with libvirt's last word on the agent, not the
// deadline's; one with time enough runs once the agent answers; a command
// that outlives its timeout answers at it and is killed in the guest.
func TestGuestOperationsWaitForABootingAgentWithinReadyWait(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	impatient := r.driverOn(t, r.config+"[plugins.libvirt.config.guest]\nready_wait = \"300ms\"\n")
	patient := r.driverOn(t, r.config+"[plugins.libvirt.config.guest]\nready_wait = \"3m\"\n")
	ctx := plugintest.Context(t, 5*time.Minute)

	// Not restored, the domain boots: its agent starts seconds later.
	require.NoError(t, impatient.Start(ctx, "vm1"))
	begun := time.Now()
	short, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
	defer cancel()
	_, err := patient.Exec(short, "vm1", hypervisor.ExecRequest{Path: "true"})
	took := time.Since(begun)
	require.Error(t, err, "the agent of a guest that has just begun to boot answered")
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "the caller's deadline came first: %v", err)
	// A retry's last try comes a moment before its deadline.
	assert.Greater(t, took, 350*time.Millisecond, "it waited for the caller's deadline")
	assert.Less(t, took, 20*time.Second, "and not much longer")

	begun = time.Now()
	_, err = impatient.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "true"})
	took = time.Since(begun)
	require.Error(t, err, "the agent of a guest that has just begun to boot answered")
	t.Logf("after %s: %v", took.Round(time.Millisecond), err)
	assert.Equal(t, hypervisor.CodeInvalidState, hypervisor.CodeOf(err), "%v", err)
	assert.Contains(t, err.Error(), "the guest agent did not answer within 300ms: ")
	assert.Contains(t, err.Error(), "agent is not connected", "libvirt's last word on the agent")
	assert.NotContains(t, err.Error(), "deadline exceeded", "the deadline's word instead of libvirt's")
	assert.Greater(t, took, 250*time.Millisecond, "it waited for guest.ready_wait")
	assert.Less(t, took, 20*time.Second, "and not much longer")

	begun = time.Now()
	res, err := patient.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "true"})
	require.NoError(t, err, "the agent did not answer within guest.ready_wait of 3m")
	assert.Equal(t, 0, res.ExitCode)
	t.Logf("the agent answered after %s more", time.Since(begun).Round(time.Millisecond))

	req := hypervisor.ExecRequest{Path: "sh", Args: []string{"-c", "echo $$ >/tmp/sleeper; exec sleep 600"}, Timeout: time.Second}
	begun = time.Now()
	_, err = patient.Exec(ctx, "vm1", req)
	took = time.Since(begun)
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
	assert.Contains(t, err.Error(), "still running at its deadline; killed it in the guest")
	assert.Less(t, took, req.Timeout+10*time.Second, "answered %s after its timeout of %s", took, req.Timeout)
	gone, err := patient.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "sh", Args: []string{"-c",
		`p=$(cat /tmp/sleeper); for i in $(seq 50); do kill -0 "$p" 2>/dev/null || exit 0; sleep 0.1; done; exit 1`}})
	require.NoError(t, err)
	assert.Equal(t, 0, gone.ExitCode, "the timed-out command still runs in the guest")
}

// Unlock of an off domain whose disk another process holds waits for it
// for timeouts.unlock: past that it answers locked and names the state it
// last read; within it, it returns once the holder lets go.
func TestUnlockWaitsForAnotherHolderWithinTimeoutsUnlock(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	impatient := r.driverOn(t, strings.Replace(r.config, `unlock = "30s"`, `unlock = "500ms"`, 1))
	d := r.driver(t) // timeouts.unlock = "30s"
	ctx := plugintest.Context(t, 3*time.Minute)

	holder := exec.Command("qemu-io", "-f", "qcow2", "-c", "sleep 600000", r.disk("vm1"))
	require.NoError(t, holder.Start())
	held := make(chan error, 1)
	go func() { held <- holder.Wait() }()
	t.Cleanup(func() { _ = holder.Process.Kill(); <-held })
	waitFor(t, d, "vm1", time.Minute, "locked", func(st hypervisor.Status) bool { return st.Lock == hypervisor.LockLocked })

	begun := time.Now()
	err := impatient.Unlock(ctx, "vm1")
	took := time.Since(begun)
	assert.Equal(t, hypervisor.CodeLocked, hypervisor.CodeOf(err), "%v", err)
	assert.Regexp(t, `still held after 500ms: the domain is \S`, err, "the state last read")
	assert.GreaterOrEqual(t, took, 500*time.Millisecond, "it waited for timeouts.unlock")
	assert.Less(t, took, 20*time.Second, "and not much longer")

	time.AfterFunc(2*time.Second, func() { _ = holder.Process.Signal(syscall.SIGTERM) })
	begun = time.Now()
	require.NoError(t, d.Unlock(ctx, "vm1"), "the holder let go within timeouts.unlock")
	took = time.Since(begun)
	assert.GreaterOrEqual(t, took, time.Second, "Unlock returned before the holder let go")
	assert.Less(t, took, 28*time.Second, "Unlock returned at its bound, not when the holder let go")
	st, err := d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock, "%+v", st)
}
