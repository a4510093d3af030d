package libvirt_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// A second libvirt client's job holds a running domain: its QEMU hangs
// (SIGSTOP) under a suspend that another client sent, which keeps libvirt's
// state change lock. Status still answers at once, says locked and why;
// the power-off still ends the domain (libvirt's destroy kills QEMU
// before it waits for the job), and the domain is then unlocked.
func TestSecondLibvirtJobHoldsTheDomain(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	d := r.driver(t)
	ctx := plugintest.Context(t, 3*time.Minute)
	require.NoError(t, d.Restore(ctx, "vm1", "ready"))
	require.NoError(t, d.Start(ctx, "vm1"))
	pid := r.d.qemuPID(r.domain("vm1"))
	require.NotZero(t, pid)
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })

	other, err := r.d.connect()
	require.NoError(t, err)
	defer other.Disconnect()
	dom, err := other.DomainLookupByName(r.domain("vm1"))
	require.NoError(t, err)
	suspended := make(chan error, 1)
	go func() { suspended <- other.DomainSuspend(dom) }()

	st := waitFor(t, d, "vm1", 30*time.Second, "a job reported", func(st hypervisor.Status) bool {
		return st.Lock == hypervisor.LockLocked && strings.Contains(st.Raw, "libvirt job")
	})
	t.Logf("held: %+v", st)
	begun := time.Now()
	_, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Less(t, time.Since(begun), 5*time.Second, "Status takes no job, so it does not wait for the one held")
	assert.ErrorIs(t, d.Restore(ctx, "vm1", "ready"), hypervisor.ErrInvalidState)

	require.NoError(t, d.Stop(ctx, "vm1", hypervisor.StopPowerOff))
	st, err = d.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "%+v", st)
	select {
	case err := <-suspended:
		assert.Error(t, err, "the other client's suspend failed with its QEMU gone")
	case <-time.After(time.Minute):
		t.Error("the other client's call never ended")
	}
	waitFor(t, d, "vm1", 30*time.Second, "unlocked", func(st hypervisor.Status) bool { return st.Lock == hypervisor.LockUnlocked })
	assert.Zero(t, r.d.qemuPID(r.domain("vm1")))
}

// A start cut short by its deadline answers timeout, and the domain libvirt
// started anyway is destroyed: no QEMU runs for a caller that left (§12.1b).
func TestStartDeadlineLeavesNoProcess(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	d := r.driver(t)
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := d.Start(short, "vm1")
	require.Error(t, err)
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
	waitFor(t, d, "vm1", 2*time.Minute, "off and unlocked", func(st hypervisor.Status) bool {
		return st.Power.IsOff() && st.Lock == hypervisor.LockUnlocked
	})
	deadline := time.Now().Add(30 * time.Second)
	for r.d.qemuPID(r.domain("vm1")) != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	assert.Zero(t, r.d.qemuPID(r.domain("vm1")), "no QEMU of the domain runs")
}

// libvirtd away is unavailable, named, and the plugin finds it again once
// it is back, without a relaunch of the plugin. A watch opened before goes
// on through it: libvirt's events end with the connection, and the watch
// reads the status on its own.
func TestLibvirtdAwayIsUnavailable(t *testing.T) {
	r := newRig(t, vmSpec{name: "vm1"})
	d := r.driver(t)
	ctx := plugintest.Context(t, 2*time.Minute)
	_, err := d.Status(ctx, "vm1")
	require.NoError(t, err)
	watch, err := d.Watch(ctx, "vm1")
	require.NoError(t, err)
	first := <-watch
	require.True(t, first.Power.IsOff(), "%+v", first)
	require.NoError(t, r.d.restart(ctx))
	// The first call after the restart may meet the old connection's end;
	// the next connects again.
	var st hypervisor.Status
	for i := 0; i < 50; i++ {
		if st, err = d.Status(ctx, "vm1"); err == nil {
			break
		}
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err), "%v", err)
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "%+v", st)

	require.NoError(t, d.Start(ctx, "vm1"))
	seen := time.After(30 * time.Second)
	for st := first; st.Power != hypervisor.PowerRunning; {
		select {
		case next, open := <-watch:
			require.True(t, open, "the watch closed; last %+v", st)
			st = next
		case <-seen:
			t.Fatalf("the watch opened before libvirtd's restart did not deliver running within 30s of the start; last %+v", st)
		}
	}
}
