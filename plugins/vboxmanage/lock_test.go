package vboxmanage_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The scenario the project exists for: right after a power-off the VM
// process keeps the session "unlocking" for a while, and VirtualBox
// refuses the restore with "already locked for a session (or being
// unlocked)". The driver waits it out; the caller sees a plain success.
func TestRestoreRightAfterPowerOffWaitsOutTheLingeringLock(t *testing.T) {
	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			const linger = 1200 * time.Millisecond
			// Three commands meet the session before it can end, so that
			// the restore meets it however long a busy machine took.
			r := newRig(t, p, withTiming(func(tm *vboxsim.Timing) { tm.Unlock, tm.UnlockSeen = vboxsim.Duration(linger), 3 }))
			ctx := testContext(t)
			require.NoError(t, r.drv.Start(ctx, vmName))
			require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))
			stopped := time.Now()
			require.NoError(t, r.drv.Restore(ctx, vmName, "clean"), "no lock error reaches the caller")
			assert.GreaterOrEqual(t, time.Since(stopped), linger-100*time.Millisecond, "the restore had to wait")
			// How much longer it waited is bounded by retry.locked (5 s): a
			// driver that kept waiting would have answered locked.
			st, err := r.drv.Status(ctx, vmName)
			require.NoError(t, err)
			assert.Equal(t, hypervisor.PowerOff, st.Power)
			assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
			assert.Equal(t, "clean", st.CurrentSnapshot)
			assert.Greater(t, r.argvCount(t, "snapshot", "restore"), 1, "VirtualBox did refuse at first")
			assert.NotContains(t, r.logs.String(), "[ERROR]")
		})
	}
}

// A start that meets the lingering session waits it out the same way.
func TestStartRightAfterPowerOffWaitsOutTheLingeringLock(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[1], withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(600 * time.Millisecond) }))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))
	require.NoError(t, r.drv.Start(ctx, vmName))
	st, err := r.drv.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power)
}

// When the lock outlasts the retry budget, the operation answers locked
// (retryable), within the caller's deadline.
func TestALockThatOutlastsTheBudgetIsReportedAsLocked(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) }),
		withSetting("retry.locked", `"300ms"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))
	err := r.drv.Restore(ctx, vmName, "clean")
	require.Error(t, err)
	assert.True(t, hypervisor.IsLocked(err))
	assert.Contains(t, err.Error(), "is already locked for a session (or being unlocked)")
	err = r.drv.Start(ctx, vmName)
	assert.True(t, hypervisor.IsLocked(err), "%v", err)

	short := plugintest.Context(t, 150*time.Millisecond)
	start := time.Now()
	err = r.drv.Restore(short, vmName, "clean")
	assert.Less(t, time.Since(start), time.Second)
	assert.Error(t, err)
}

// A VM process that will not exit: Unlock gives it unlock.grace, then
// kills it with emergencystop, after which the session is released.
func TestUnlockKillsAVMProcessThatWillNotDie(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[0],
		withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) }),
		withSetting("unlock.grace", `"300ms"`),
		// The cleanup below must find the VM off by itself after its
		// power-off; 1 s was spent by a busy machine, and the cleanup then
		// killed the VM as one that would not stop.
		withSetting("cleanup.stop_wait", `"1m"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))
	start := time.Now()
	require.NoError(t, r.drv.Unlock(ctx, vmName))
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "the VM process got its grace period")
	assert.Equal(t, 1, r.argvCount(t, "--type", "emergencystop"))
	st, err := r.drv.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	assert.Equal(t, hypervisor.PowerOff, st.Power, "a powered-off VM whose process is killed stays powered off")
	assert.Contains(t, r.logs.String(), "killed the VM process")

	// The same, through the native cleanup.
	require.NoError(t, r.drv.Start(ctx, vmName))
	res, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	require.NoError(t, err)
	assert.Equal(t, []string{"poweroff", "wait-off", "wait-unlock", "emergencystop", "restore clean"}, actions(res))
	for _, s := range res.Steps {
		assert.NotEqual(t, "failed", s.Outcome, s.Action)
	}
}

// If the listing does not show the session of an exiting VM process, the
// native cleanup still gets through: the restore meets the lock, the
// process is killed, the restore is repeated.
func TestCleanupGetsPastALockTheListingDoesNotShow(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) }),
		withFaults(func(f *vboxsim.Faults) { f.HideSessionName = true }),
		withSetting("retry.locked", `"300ms"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))
	st, err := r.drv.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock, "the listing hides the lingering session")
	res, err := r.drv.Cleanup(ctx, vmName, hypervisor.CleanupRequest{Restore: true, Snapshot: "clean"})
	require.NoError(t, err)
	assert.Equal(t, []string{"restore clean", "emergencystop", "restore clean"}, actions(res))
	assert.Equal(t, "locked", res.Steps[0].Outcome)
}

// A session held by something that is not a VM process (here the GUI with
// a settings dialog open) cannot be killed: Unlock answers locked.
func TestUnlockAnswersLockedForAHolderItMayNotKill(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2], withSetting("unlock.grace", `"100ms"`))
	r.sim.Update(t, func(w *vboxsim.World) {
		w.Find(vmName).Session = vboxsim.Session{State: vboxsim.Locked, Owner: vboxsim.OwnerGUI, Name: "GUI/Qt"}
	})
	ctx := testContext(t)
	st, err := r.drv.Status(ctx, vmName)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.LockLocked, st.Lock)
	err = r.drv.Unlock(ctx, vmName)
	require.Error(t, err)
	assert.True(t, hypervisor.IsLocked(err), "%v", err)
	assert.Contains(t, err.Error(), "does not have a VM process")
	assert.Equal(t, vboxsim.OwnerGUI, r.sim.VM(t, vmName).Session.Owner, "the GUI keeps its session")
}

// VirtualBox 5.0 has no emergencystop: Unlock can only wait, and answers
// timeout when the caller's deadline passes first.
func TestUnlockWithoutEmergencyStopWaitsUntilTheDeadline(t *testing.T) {
	t.Parallel()
	r := newRig(t, profile{version: "5.0.40r115130", host: "linux"},
		withTiming(func(tm *vboxsim.Timing) { tm.Unlock = vboxsim.Duration(-1) }),
		withSetting("unlock.grace", `"0s"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	require.NoError(t, r.drv.Stop(ctx, vmName, hypervisor.StopPowerOff))
	err := r.drv.Stop(ctx, vmName, hypervisor.StopEmergency)
	assert.True(t, hypervisor.IsUnsupported(err))
	// The deadline leaves a busy machine time to read the status before
	// the wait begins, so that the wait is what the deadline ends.
	const deadline = 3 * time.Second
	start := time.Now()
	err = r.drv.Unlock(plugintest.Context(t, deadline), vmName)
	require.Error(t, err)
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "still held")
	assert.Less(t, time.Since(start), deadline+20*time.Second, "Unlock left at the caller's deadline")
	assert.Zero(t, r.argvCount(t, "emergencystop"))
}

// §3.6: Status takes no session lock. An outside VBoxManage starting,
// restoring and stopping the VM while the driver polls its status never
// meets a lock; the same polling done with showvminfo does make a start
// fail, which is why the driver does not use it.
func TestStatusNeverTakesASessionLock(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2], withTiming(func(tm *vboxsim.Timing) {
		tm.ReadHold = vboxsim.Duration(300 * time.Millisecond)
		tm.Restore = vboxsim.Duration(300 * time.Millisecond)
	}))
	ctx := testContext(t)
	done := make(chan struct{})
	polls := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			_, err := r.drv.Status(ctx, vmName)
			assert.NoError(t, err)
			polls++
		}
	}()
	for _, args := range [][]string{
		{"snapshot", vmName, "restore", "clean"},
		{"startvm", vmName, "--type", "headless"},
		{"controlvm", vmName, "poweroff"},
	} {
		_, stderr, code := r.sim.Run(args...)
		require.Equal(t, 0, code, "%v: %s", args, stderr)
	}
	close(done)
	wg.Wait()
	assert.Positive(t, polls)

	r.waitStatus(t, vmName, offAndUnlocked)
	// This showvminfo holds the VM until it is killed, so that the start
	// meets its lock however long a busy machine takes to launch it; its
	// lock then goes with it, as VBoxSVC's client watcher releases it.
	r.sim.Update(t, func(w *vboxsim.World) { w.Config.Timing.ReadHold = vboxsim.Duration(time.Hour) })
	other := exec.Command(r.sim.Bin, "showvminfo", vmName, "--machinereadable")
	other.Env = append(os.Environ(), "VBOX_USER_HOME="+r.sim.Home)
	require.NoError(t, other.Start())
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	require.Eventually(t, func() bool { return r.sim.VM(t, vmName).Session.State == vboxsim.Locked }, time.Minute, 5*time.Millisecond)
	_, stderr, code := r.sim.Run("startvm", vmName, "--type", "headless")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "is already locked by a session", "showvminfo holds a stopped VM while it runs")
}

// Status answers while a long operation on the same VM runs, and sees it.
func TestStatusDuringARestore(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[1], withTiming(func(tm *vboxsim.Timing) { tm.Restore = vboxsim.Duration(time.Second) }))
	ctx := testContext(t)
	errc := make(chan error, 1)
	go func() { errc <- r.drv.Restore(ctx, vmName, "clean") }()
	st := r.waitStatus(t, vmName, func(st hypervisor.Status) bool { return st.Power == hypervisor.PowerRestoring })
	assert.Equal(t, "restoringsnapshot", st.Raw)
	assert.Equal(t, hypervisor.LockLocked, st.Lock)
	require.NoError(t, <-errc)
}

// Lifecycle calls on different VMs run in parallel: the second startvm
// began while the first was still running. Each startvm runs for at least
// Timing.Start, so a driver that let one call at a time through would
// start the second at least that long after the first, on a machine of
// any speed; the two calls begun together start theirs within moments,
// however busy the machine (Start is long so that "moments" may be long).
func TestDifferentVMsProceedInParallel(t *testing.T) {
	t.Parallel()
	const boot = 3 * time.Second
	r := newRig(t, profiles[2],
		withVMs(guestVM("a", "00000000-0000-4000-8000-00000000000a"), guestVM("b", "00000000-0000-4000-8000-00000000000b")),
		withTiming(func(tm *vboxsim.Timing) { tm.Start = vboxsim.Duration(boot) }))
	ctx := plugintest.Context(t, 2*time.Minute)
	_, err := r.drv.Info(ctx) // the version probe, which both calls would share, is not what is timed
	require.NoError(t, err)
	var wg sync.WaitGroup
	for _, vm := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, r.drv.Start(ctx, vm))
		}()
	}
	wg.Wait()
	var began []time.Time
	for _, inv := range r.sim.Invocations(t) {
		if containsSeq(inv.Args, []string{"startvm"}) {
			began = append(began, inv.Time)
		}
	}
	require.Len(t, began, 2)
	gap := began[1].Sub(began[0]).Abs()
	assert.Less(t, gap, boot, "the second startvm began %s after the first, which runs %s: the starts did not overlap", gap, boot)
}

// A VM name is data: spaces, quotes, shell syntax and a leading dash all
// reach VBoxManage as one argument.
func TestAwkwardVMNames(t *testing.T) {
	awkwardNames(t, newRig)
}

// awkwardNames drives VMs with names a shell would misread, each on its
// own simulated host, through the driver connect makes.
func awkwardNames(t *testing.T, connect func(testing.TB, profile, ...rigOption) *rig) {
	names := []string{
		`win 10 "quoted" 'single'`,
		`evil; rm -rf / && $(reboot) | x`,
		`-looks-like-an-option`,
	}
	for i, name := range names {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			uuid := "00000000-0000-4000-8000-00000000000" + string(rune('a'+i))
			r := connect(t, profiles[i%len(profiles)], withVMs(guestVM(name, uuid)))
			ctx := testContext(t)
			d := r.drv
			vms, err := d.ListVMs(ctx)
			require.NoError(t, err)
			require.Len(t, vms, 1)
			assert.Equal(t, name, vms[0].Name)
			require.NoError(t, d.Start(ctx, name))
			res, err := d.Exec(ctx, name, hypervisor.ExecRequest{Path: "echo", Args: []string{name}})
			require.NoError(t, err)
			assert.Equal(t, name+"\n", string(res.Stdout))
			require.NoError(t, d.Stop(ctx, name, hypervisor.StopPowerOff))
			require.NoError(t, d.Restore(ctx, name, "clean"))
			st, err := d.Status(ctx, name)
			require.NoError(t, err)
			assert.Equal(t, hypervisor.PowerOff, st.Power)
			assert.Equal(t, name, st.VM)
			if strings.HasPrefix(name, "-") {
				for _, inv := range r.sim.Invocations(t) {
					if len(inv.Args) > 1 && inv.Args[0] != "list" {
						assert.NotEqual(t, name, inv.Args[1], "a dash name is passed as its UUID: %v", inv.Args)
					}
				}
			}
		})
	}
}

func TestGuestOperations(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2],
		withTiming(func(tm *vboxsim.Timing) { tm.GuestReady = vboxsim.Duration(500 * time.Millisecond) }),
		withSetting("guest.ready_wait", `"3s"`))
	ctx := testContext(t)
	d := r.drv

	_, err := d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo"})
	assert.Equal(t, hypervisor.CodeInvalidState, hypervisor.CodeOf(err), "a stopped VM runs nothing: %v", err)

	require.NoError(t, d.Start(ctx, vmName))
	res, err := d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo", Args: []string{"booted"}})
	require.NoError(t, err, "the driver waits for the guest execution service")
	assert.Equal(t, "booted\n", string(res.Stdout))
	assert.Greater(t, r.argvCount(t, "guestcontrol"), 1)

	res, err = d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "exit", Args: []string{"250"}})
	require.NoError(t, err)
	assert.Equal(t, 126, res.ExitCode, "guest codes above 93 come back as 126")

	start := time.Now()
	// The guest program sleeps for minutes: a command that ended at its
	// timeout is told from one that ran to its end with slack for a busy
	// machine.
	_, err = d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "sleep", Args: []string{"600"}, Timeout: 200 * time.Millisecond})
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
	assert.Less(t, time.Since(start), 30*time.Second)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = d.Exec(short, vmName, hypervisor.ExecRequest{Path: "sleep", Args: []string{"600"}})
	assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "ctx bounds a command without its own timeout: %v", err)
	assert.Less(t, time.Since(start), 30*time.Second)

	err = d.CopyIn(ctx, vmName, "/nonexistent/file", `C:\x`)
	assert.Error(t, err)
	err = d.CopyOut(ctx, vmName, `C:\missing.txt`, t.TempDir()+"/x")
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), `C:\missing.txt`)
}

func TestGuestNotReadyIsInvalidStateOnceTheWaitIsOver(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[3],
		withTiming(func(tm *vboxsim.Timing) { tm.GuestReady = vboxsim.Duration(time.Hour) }),
		withSetting("guest.ready_wait", `"300ms"`))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	_, err := r.drv.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo"})
	assert.Equal(t, hypervisor.CodeInvalidState, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "The guest execution service is not ready (yet)")
}

func TestWrongGuestPasswordIsAFailure(t *testing.T) {
	t.Parallel()
	vm := guestVM(vmName, vmUUID)
	vm.GuestUsers[userName] = "something else"
	r := newRig(t, profiles[2], withVMs(vm))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	_, err := r.drv.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo"})
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "The specified user was not able to logon on guest")
}

// The guest password travels in a 0600 file, never on a command line or
// in a log line, and the file is gone afterwards.
func TestPasswordNeverInArgvOrLogs(t *testing.T) {
	t.Parallel()
	passwordStaysSecret(t, newRig(t, profiles[1]))
}

// passwordStaysSecret runs every guest operation and then searches the
// simulator's argv log and r's logs for the password.
func passwordStaysSecret(t *testing.T, r *rig) {
	ctx := testContext(t)
	d := r.drv
	require.NoError(t, d.Start(ctx, vmName))
	host := t.TempDir() + "/f.txt"
	require.NoError(t, os.WriteFile(host, []byte("x"), 0o644))
	require.NoError(t, d.CopyIn(ctx, vmName, host, `C:\f.txt`))
	_, err := d.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "cat", Args: []string{`C:\f.txt`}})
	require.NoError(t, err)
	require.NoError(t, d.CopyOut(ctx, vmName, `C:\f.txt`, t.TempDir()+"/g.txt"))

	uses := 0
	for _, inv := range r.sim.Invocations(t) {
		for _, a := range inv.Args {
			assert.NotContains(t, a, guestPW, "argv of %v", inv.Args)
			assert.NotEqual(t, "--password", a)
		}
		if containsSeq(inv.Args, []string{"--passwordfile"}) {
			uses++
		}
	}
	assert.Equal(t, 3, uses)
	logs := r.logs.String()
	assert.Contains(t, logs, "--passwordfile", "the log searched holds the guest invocations")
	assert.NotContains(t, logs, guestPW)
	assert.NotContains(t, logs, "Pa55")
	left, err := os.ReadDir(r.tmp)
	require.NoError(t, err)
	assert.Empty(t, left, "password files are removed")
}

// Each of VirtualBox's texts for a guest whose guest control is still
// starting is waited out within guest.ready_wait; a logon failure, which
// waiting does not fix, fails at once.
func TestGuestNotReadyTexts(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		starting string
		retried  bool
	}{
		{"not-ready", true},   // The guest execution service is not ready (yet)
		{"not-started", true}, // Session is not in started state
		{"starting", true},    // Error starting guest session (current status is: starting)
		{"logon", false},      // The specified user was not able to logon on guest
	} {
		t.Run(c.starting, func(t *testing.T) {
			t.Parallel()
			// The first two guest control calls find the guest booting,
			// however long a busy machine took to make them.
			r := newRig(t, profiles[2],
				withFaults(func(f *vboxsim.Faults) { f.GuestStarting, f.GuestNotReady = c.starting, 2 }),
				withSetting("guest.ready_wait", `"20s"`))
			ctx := testContext(t)
			require.NoError(t, r.drv.Start(ctx, vmName))
			res, err := r.drv.Exec(ctx, vmName, hypervisor.ExecRequest{Path: "echo", Args: []string{"booted"}})
			if c.retried {
				require.NoError(t, err, "the driver waits while the guest says it is starting")
				assert.Equal(t, "booted\n", string(res.Stdout))
				assert.Equal(t, 3, r.argvCount(t, "guestcontrol"), "tried until the guest answered")
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), "not able to logon")
			assert.Equal(t, 1, r.argvCount(t, "guestcontrol"), "a logon failure is not retried")
		})
	}
}

// A guest command's output is kept up to the request's max_output, and the
// result says what was dropped (§9.5).
func TestExecOutputBounded(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2], withSetting("max_output", "100000"))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	flood := hypervisor.ExecRequest{Path: "dd", Args: []string{"if=/dev/zero", "bs=65536", "count=64"}}
	var res hypervisor.ExecResult
	require.Eventually(t, func() bool {
		var err error
		res, err = r.drv.Exec(ctx, vmName, flood)
		return err == nil
	}, 20*time.Second, 50*time.Millisecond)
	assert.Len(t, res.Stdout, 100000, "max_output bounds what is kept")
	assert.True(t, res.StdoutTruncated)
	assert.False(t, res.StderrTruncated)

	flood.MaxOutput = 1000
	res, err := r.drv.Exec(ctx, vmName, flood)
	require.NoError(t, err)
	assert.Len(t, res.Stdout, 1000, "a request asks for less")
	assert.True(t, res.StdoutTruncated)

	flood.MaxOutput = 1 << 30
	res, err = r.drv.Exec(ctx, vmName, flood)
	require.NoError(t, err)
	assert.Len(t, res.Stdout, 100000, "never for more than the driver's bound")
}

// A guest file larger than max_copy_out is not copied out: the copy fails
// saying so and leaves nothing on the host (§9.5); a smaller one arrives
// whole.
func TestCopyOutBounded(t *testing.T) {
	t.Parallel()
	r := newRig(t, profiles[2], withSetting("max_copy_out", "100000"))
	ctx := testContext(t)
	require.NoError(t, r.drv.Start(ctx, vmName))
	dir := t.TempDir()
	big, small := filepath.Join(dir, "big"), filepath.Join(dir, "small")
	require.NoError(t, os.WriteFile(big, bytes.Repeat([]byte("x"), 300000), 0o644))
	require.NoError(t, os.WriteFile(small, []byte("small"), 0o644))
	require.Eventually(t, func() bool { return r.drv.CopyIn(ctx, vmName, big, "/tmp/big") == nil }, 20*time.Second, 50*time.Millisecond)
	require.NoError(t, r.drv.CopyIn(ctx, vmName, small, "/tmp/small"))

	out := t.TempDir()
	err := r.drv.CopyOut(ctx, vmName, "/tmp/big", filepath.Join(out, "big"))
	require.Error(t, err)
	assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
	assert.Contains(t, err.Error(), "larger than max_copy_out")
	entries, _ := os.ReadDir(out)
	assert.Empty(t, entries, "nothing is left on the host")

	require.NoError(t, r.drv.CopyOut(ctx, vmName, "/tmp/small", filepath.Join(out, "small")))
	got, err := os.ReadFile(filepath.Join(out, "small"))
	require.NoError(t, err)
	assert.Equal(t, "small", string(got))
}
