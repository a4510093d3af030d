package vboxmanage_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

const otherVM, otherUUID = "other vm", "4f8a3c1e-2b7d-4c0a-9e51-7d2c8b9a6f10"

// inFlight waits until the simulator has recorded an invocation whose
// arguments contain words, and returns its process id.
func (r *rig) inFlight(t testing.TB, words ...string) int {
	t.Helper()
	pid := 0
	require.Eventually(t, func() bool {
		for _, inv := range r.sim.Invocations(t) {
			if containsSeq(inv.Args, words) {
				pid = inv.PID
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "no VBoxManage %v started", words)
	return pid
}

// Close, as the plugin's server calls it when the host dies: the
// VBoxManage processes of the operations in flight (a guest program
// running, a power-off that hangs) are killed, the password file on disk
// is removed, the operations answer unavailable, and so does everything
// after. Close is idempotent and may race operations.
func TestCloseKillsVBoxManageAndRemovesPasswordFiles(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withVMs(guestVM(vmName, vmUUID), guestVM(otherVM, otherUUID)),
		withFaults(func(f *vboxsim.Faults) { f.HangPowerOff = true }),
		withSetting("timeouts.poweroff", `"5m"`))
	ctx := plugintest.Context(t, time.Minute)
	d := r.drv
	require.NoError(t, d.Start(ctx, vmName))
	require.NoError(t, d.Start(ctx, otherVM))

	errs := make(chan error, 2)
	go func() {
		_, err := d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "sleep", Args: []string{"600"}})
		errs <- err
	}()
	go func() { errs <- d.Stop(ctx, otherVM, hypervisor.StopPowerOff) }()
	pids := []int{r.inFlight(t, "guestcontrol", "run"), r.inFlight(t, "controlvm", "poweroff")}
	left, err := os.ReadDir(r.tmp)
	require.NoError(t, err)
	require.Len(t, left, 1, "the guest program's password file is on disk")

	// Operations keep arriving while Close runs; each one either finishes
	// or is told that the driver is shutting down.
	var wg sync.WaitGroup
	stopHammer := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stopHammer:
					return
				default:
				}
				if _, err := d.Status(ctx, otherVM); err != nil {
					assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err), "%v", err)
				}
			}
		}()
	}

	start := time.Now()
	var closers sync.WaitGroup
	for range 2 {
		closers.Add(1)
		go func() {
			defer closers.Done()
			assert.NoError(t, r.native.Close())
		}()
	}
	closers.Wait()
	took := time.Since(start)
	close(stopHammer)
	wg.Wait()

	// The operations would run for minutes by themselves (a 600 s guest
	// program, a power-off that hangs until timeouts.poweroff, 5 m); the
	// bound leaves a busy machine its slack without letting Close wait.
	assert.Less(t, took, 30*time.Second, "Close does not wait for the operations to finish by themselves")
	left, err = os.ReadDir(r.tmp)
	require.NoError(t, err)
	assert.Empty(t, left, "no password file remains once Close returned")
	for _, pid := range pids {
		assert.Eventually(t, func() bool { return !plugintest.Alive(pid) }, 30*time.Second, 5*time.Millisecond,
			"VBoxManage %d is killed", pid)
	}
	for range 2 {
		select {
		case err := <-errs:
			require.Error(t, err)
			assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err), "%v", err)
			assert.Contains(t, err.Error(), "the driver is shutting down")
		case <-time.After(5 * time.Second):
			t.Fatal("an operation in flight did not return after Close")
		}
	}

	_, err = d.Status(ctx, vmName)
	assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "the driver is shutting down")
	_, err = d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo"})
	assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err))
	assert.NoError(t, r.native.Close(), "closing twice is fine")
}

// A probe of VBoxManage in flight does not hold other calls past their own
// deadlines; a probe that fails is tried again by the next call; a probe
// nobody waits for any more is stopped with its VBoxManage.
func TestProbeWaitsWithinEachCallersDeadline(t *testing.T) {
	t.Parallel()
	t.Run("a short deadline while another call probes", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[2],
			withFaults(func(f *vboxsim.Faults) { f.HangVersion = 1 }),
			withSetting("timeouts.command", `"5s"`))
		first := make(chan error, 1)
		go func() {
			_, err := r.drv.Info(plugintest.Context(t, time.Minute))
			first <- err
		}()
		hung := r.inFlight(t, "--version")

		const deadline = 100 * time.Millisecond
		start := time.Now()
		_, err := r.drv.Status(plugintest.Context(t, deadline), vmName)
		elapsed := time.Since(start)
		assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
		assert.GreaterOrEqual(t, elapsed, deadline-10*time.Millisecond)
		// The probe hangs until its 5 s timeout: a call that waited for it
		// would come back after the probe's end, not while it still runs.
		assert.Less(t, elapsed, 5*time.Second, "the call left when its deadline passed")
		assert.True(t, plugintest.Alive(hung), "the first call still probes")

		err = <-first
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err), "%v", err)
		assert.Contains(t, err.Error(), "did not finish within")
		var he *hypervisor.Error
		require.ErrorAs(t, err, &he)
		assert.Equal(t, hypervisor.OpInfo, he.Op)

		info, err := r.drv.Info(testContext(t))
		require.NoError(t, err, "the failed probe is tried again")
		assert.Equal(t, "VirtualBox "+profiles[2].version, info.Hypervisor)
		assert.Equal(t, 2, r.argvCount(t, "--version"))
		_, err = r.drv.Status(testContext(t), vmName)
		require.NoError(t, err)
		assert.Equal(t, 2, r.argvCount(t, "--version"), "a probe that succeeded is kept")
	})
	t.Run("every caller gave up", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[2], withFaults(func(f *vboxsim.Faults) { f.HangVersion = -1 }))
		// The first caller waits until the test gives up for it, so that
		// the probe is sure to be in flight when the second caller comes
		// and goes at its deadline, however long a busy machine takes to
		// launch it; then the first gives up too.
		first, giveUp := context.WithCancel(context.Background())
		defer giveUp()
		firstErr := make(chan error, 1)
		go func() {
			_, err := r.drv.Status(first, vmName)
			firstErr <- err
		}()
		hung := r.inFlight(t, "--version")
		_, err := r.drv.Status(plugintest.Context(t, 150*time.Millisecond), vmName)
		assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
		assert.True(t, plugintest.Alive(hung), "the probe goes on while the first caller waits")
		giveUp()
		select {
		case err := <-firstErr:
			assert.ErrorIs(t, err, context.Canceled)
		case <-time.After(30 * time.Second):
			t.Fatal("the first caller did not return once it gave up")
		}
		assert.Eventually(t, func() bool { return !plugintest.Alive(hung) }, 30*time.Second, 5*time.Millisecond,
			"the probe's VBoxManage is killed once nobody waits for it")
		assert.Equal(t, 1, r.argvCount(t, "--version"), "both calls waited for one probe")

		r.sim.Update(t, func(w *vboxsim.World) { w.Config.Faults.HangVersion = 0 })
		_, err = r.drv.Status(plugintest.Context(t, time.Minute), vmName)
		require.NoError(t, err)
	})
	t.Run("Close stops a probe", func(t *testing.T) {
		t.Parallel()
		r := newRig(t, profiles[2], withFaults(func(f *vboxsim.Faults) { f.HangVersion = -1 }))
		errc := make(chan error, 1)
		go func() {
			_, err := r.drv.Info(context.Background())
			errc <- err
		}()
		hung := r.inFlight(t, "--version")
		require.NoError(t, r.native.Close())
		err := <-errc
		assert.Equal(t, hypervisor.CodeUnavailable, hypervisor.CodeOf(err), "%v", err)
		assert.Contains(t, err.Error(), "the driver is shutting down")
		assert.Eventually(t, func() bool { return !plugintest.Alive(hung) }, 30*time.Second, 5*time.Millisecond)
	})
}
