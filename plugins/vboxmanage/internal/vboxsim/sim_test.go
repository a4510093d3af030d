package vboxsim_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/parser"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim/simtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	simtest.Cleanup()
	os.Exit(code)
}

const uuid1 = "93a38cd7-ef00-47aa-9868-d291d4ed5e0a"

func cfg(version, host string) vboxsim.Config {
	return vboxsim.Config{Version: version, Host: host}
}

func world(t *testing.T, c vboxsim.Config, vms ...*vboxsim.VM) *simtest.Sim {
	t.Helper()
	if len(vms) == 0 {
		vms = []*vboxsim.VM{vboxsim.NewVM("win10", uuid1)}
	}
	return simtest.New(t, c, vms...)
}

func mustRun(t *testing.T, s *simtest.Sim, args ...string) string {
	t.Helper()
	out, errOut, code := s.Run(args...)
	require.Equal(t, 0, code, "VBoxManage %v: %s", args, errOut)
	return out
}

func TestVersionAndWrapperWarnings(t *testing.T) {
	c := cfg("6.1.34_Ubuntur150636", "linux")
	c.Faults.Warnings = true
	c.Faults.EmptyVersion = 1
	s := world(t, c)
	out := mustRun(t, s, "--version")
	assert.Contains(t, out, "WARNING: The vboxdrv kernel module is not loaded")
	_, err := parser.ParseVersion([]byte(out))
	assert.ErrorIs(t, err, parser.ErrNoVersion, "first call prints an empty version")
	v, err := parser.ParseVersion([]byte(mustRun(t, s, "--version")))
	require.NoError(t, err)
	assert.Equal(t, "6.1.34", v.String())
}

func TestUsageAndSyntaxErrors(t *testing.T) {
	s := world(t, cfg("7.0.14r161095", "linux"))
	out, _, code := s.Run()
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "Usage:")
	_, _, code = s.Run("controlvm")
	assert.Equal(t, 1, code, "a command without arguments prints usage and exits 1")
	_, errOut, code := s.Run("frobnicate")
	assert.Equal(t, 2, code)
	assert.Equal(t, "VBoxManage: error: Invalid command 'frobnicate'\n", errOut)
	_, _, code = s.Run("showvminfo", "win10", "--bogus")
	assert.Equal(t, 2, code)
}

func TestWindowsHostPrintsCRLFAndExeName(t *testing.T) {
	s := world(t, cfg("6.1.38r153438", "windows"))
	out := mustRun(t, s, "list", "vms")
	assert.Equal(t, "\"win10\" {"+uuid1+"}\r\n", out)
	_, errOut, code := s.Run("showvminfo", "nope", "--machinereadable")
	assert.Equal(t, 1, code)
	assert.Equal(t, "VBoxManage.exe: error: Could not find a registered machine named 'nope'\r\n"+
		"VBoxManage.exe: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee IUnknown\r\n"+
		"VBoxManage.exe: error: Context: \"FindMachine(Bstr(VMNameOrUuid).raw(), machine.asOutParam())\" at line 2719 of file VBoxManageInfo.cpp\r\n", errOut)
}

func TestShowVMInfoParsesForEveryVersion(t *testing.T) {
	for _, c := range []vboxsim.Config{
		cfg("5.1.38r122592", "linux"), cfg("6.1.38r153438", "windows"),
		cfg("7.0.14r161095", "linux"), cfg("7.1.4r165100", "darwin"),
	} {
		t.Run(c.Version+"-"+c.Host, func(t *testing.T) {
			vm := vboxsim.NewVM(`odd "name" \ vm`, uuid1)
			s := world(t, c, vm)
			info, err := parser.ParseVMInfo([]byte(mustRun(t, s, "showvminfo", vm.Name, "--machinereadable")))
			require.NoError(t, err)
			assert.Equal(t, vm.Name, info.Name)
			assert.Equal(t, "poweroff", info.State)
			assert.False(t, info.HasSession)
			assert.Equal(t, "clean", info.Snapshots.CurrentName())

			mustRun(t, s, "startvm", vm.Name, "--type", "headless")
			raw := mustRun(t, s, "showvminfo", uuid1, "--machinereadable")
			info, err = parser.ParseVMInfo([]byte(raw))
			require.NoError(t, err)
			assert.Equal(t, "running", info.State)
			assert.Equal(t, "headless", info.SessionName)
			assert.Equal(t, 2, info.GuestAdditionsRunLevel)
			switch {
			case c.Version[0] == '5':
				assert.Contains(t, raw, "\nVRDEClients=0\n")
			case strings.HasPrefix(c.Version, "7.0"):
				assert.Contains(t, raw, "\nEncryption:     disabled\n")
				assert.Contains(t, raw, "\n rec_screen0\n")
			case strings.HasPrefix(c.Version, "7.1"):
				assert.Contains(t, raw, "\nencryption=\"disabled\"\n")
			}
			if c.Host == "windows" {
				assert.Contains(t, raw, `CfgFile="C:\\Users\\ci\\VirtualBox VMs\\`, "escaped")
				assert.Contains(t, raw, `"SATA Controller-0-0"="C:\Users\ci\VirtualBox VMs\`, "raw before 7.0")
			}
		})
	}
}

func TestStartAndPowerOffFollowTheSessionModel(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	c.Timing.Unlock = vboxsim.Duration(400 * time.Millisecond)
	// Four commands must meet the session unlocking: the checks below that
	// it is still held hold however slowly a busy machine runs them.
	c.Timing.UnlockSeen = 4
	s := world(t, c)

	assert.Equal(t, "Waiting for VM \"win10\" to power on...\nVM \"win10\" has been successfully started.\n",
		mustRun(t, s, "startvm", "win10", "--type", "headless"))
	assert.Contains(t, mustRun(t, s, "list", "runningvms"), `"win10"`)

	_, errOut, code := s.Run("startvm", "win10", "--type", "headless")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "VBoxManage: error: The machine 'win10' is already locked by a session (or being locked or unlocked)\n")

	_, errOut, code = s.Run("controlvm", "win10", "poweroff")
	require.Equal(t, 0, code)
	assert.Equal(t, "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n", errOut)

	info, err := parser.ParseVMInfo([]byte(mustRun(t, s, "showvminfo", "win10", "--machinereadable")))
	require.NoError(t, err)
	assert.Equal(t, "poweroff", info.State)
	assert.True(t, info.HasSession, "the VM process session lingers after power-off")

	out, errOut, code := s.Run("snapshot", "win10", "restore", "clean")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, errOut, "is already locked for a session (or being unlocked)")
	assert.Contains(t, errOut, `Context: "LockMachine(a->session, LockType_Shared)"`)
	_, errOut, _ = s.Run("controlvm", "win10", "poweroff")
	assert.Contains(t, errOut, "already locked for a session", "controlvm cannot share an unlocking session")

	assert.Equal(t, vboxsim.Unlocking, s.VM(t, "win10").Session.State, "one more command must meet it")
	// Each look is a listing, so that the session can end.
	require.Eventually(t, func() bool {
		info, err := parser.ParseVMInfo([]byte(mustRun(t, s, "showvminfo", "win10", "--machinereadable")))
		require.NoError(t, err)
		return !info.HasSession
	}, 10*time.Second, 20*time.Millisecond)
	out = mustRun(t, s, "snapshot", "win10", "restore", "clean")
	assert.Equal(t, "Restoring snapshot 'clean' ("+s.VM(t, "win10").Current+")\n", out)

	_, errOut, code = s.Run("controlvm", "win10", "acpipowerbutton")
	assert.Equal(t, 1, code)
	assert.Equal(t, "VBoxManage: error: Machine 'win10' is not currently running.\n", errOut)
	assert.Equal(t, vboxsim.Unlocked, s.VM(t, "win10").Session.State, "the failed controlvm let go of its lock")
}

func TestACPIShutdownTakesGuestTimeUnlessIgnored(t *testing.T) {
	c := cfg("6.1.38r153438", "linux")
	// Long enough that the look right after the button finds the guest
	// still running on a busy machine too.
	c.Timing.ACPIShutdown = vboxsim.Duration(2 * time.Second)
	s := world(t, c)
	mustRun(t, s, "startvm", "win10", "--type", "headless")
	mustRun(t, s, "controlvm", "win10", "acpipowerbutton")
	assert.Equal(t, "running", s.VM(t, "win10").State)
	require.Eventually(t, func() bool { return s.VM(t, "win10").State == "poweroff" }, time.Minute, 20*time.Millisecond)

	s.Update(t, func(w *vboxsim.World) { w.Config.Faults.ACPIIgnored = true })
	mustRun(t, s, "startvm", "win10", "--type", "headless")
	mustRun(t, s, "controlvm", "win10", "acpipowerbutton")
	time.Sleep(2500 * time.Millisecond) // longer than the guest's shutdown time
	assert.Equal(t, "running", s.VM(t, "win10").State)
}

func TestEmergencyStop(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	c.Timing.Unlock = vboxsim.Duration(-1) // the VM process never exits by itself
	s := world(t, c)

	_, errOut, code := s.Run("startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "The machine 'win10' is not locked by a session")

	mustRun(t, s, "startvm", "win10", "--type", "headless")
	mustRun(t, s, "controlvm", "win10", "poweroff")
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, vboxsim.Unlocking, s.VM(t, "win10").Session.State)
	assert.Equal(t, "", mustRun(t, s, "startvm", "win10", "--type", "emergencystop"))
	vm := s.VM(t, "win10")
	assert.Equal(t, vboxsim.Unlocked, vm.Session.State)
	assert.Equal(t, "poweroff", vm.State, "a powered-off VM stays powered off when its process is killed")

	mustRun(t, s, "startvm", "win10", "--type", "headless")
	mustRun(t, s, "startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, "aborted", s.VM(t, "win10").State, "a running VM's killed process leaves it aborted")
}

func TestOneVMsProcessCanLingerAmongOthers(t *testing.T) {
	never := vboxsim.Duration(-1)
	stuck := vboxsim.NewVM("stuck", "00000000-0000-4000-8000-000000000001")
	stuck.Unlock = &never
	s := world(t, cfg("7.0.14r161095", "linux"), vboxsim.NewVM("fine", uuid1), stuck)
	for _, vm := range []string{"fine", "stuck"} {
		mustRun(t, s, "startvm", vm, "--type", "headless")
		mustRun(t, s, "controlvm", vm, "poweroff")
	}
	assert.Equal(t, vboxsim.Unlocked, s.VM(t, "fine").Session.State)
	assert.Equal(t, vboxsim.Unlocking, s.VM(t, "stuck").Session.State)
}

func TestEmergencyStopRefusesANonVMClient(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	// The modifyvm holds its lock until killed, so that the emergencystop
	// meets it however slowly a busy machine launches them.
	c.Timing.WriteHold = vboxsim.Duration(time.Hour)
	s := world(t, c)
	holder := exec.Command(s.Bin, "modifyvm", "win10", "--description", "x")
	holder.Env = append(os.Environ(), "VBOX_USER_HOME="+s.Home)
	require.NoError(t, holder.Start())
	defer func() { _ = holder.Process.Kill(); _ = holder.Wait() }()
	require.Eventually(t, func() bool { return s.VM(t, "win10").Session.State == vboxsim.Locked }, time.Minute, 10*time.Millisecond)
	_, errOut, code := s.Run("startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "The machine 'win10' does not have a VM process")
}

func TestConcurrentCommandsCollideOnAStoppedVM(t *testing.T) {
	c := cfg("6.1.38r153438", "linux")
	// The first showvminfo holds its lock until killed, so that the
	// commands below meet it however slowly a busy machine launches them.
	c.Timing.ReadHold = vboxsim.Duration(time.Hour)
	s := world(t, c)
	holder := exec.Command(s.Bin, "showvminfo", "win10", "--machinereadable")
	holder.Env = append(os.Environ(), "VBOX_USER_HOME="+s.Home)
	require.NoError(t, holder.Start())
	require.Eventually(t, func() bool { return s.VM(t, "win10").Session.State == vboxsim.Locked }, time.Minute, 10*time.Millisecond)
	_, errOut, code := s.Run("startvm", "win10", "--type", "headless")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "already locked by a session (or being locked or unlocked)")
	out, _, code := s.Run("showvminfo", "win10", "--machinereadable")
	assert.Equal(t, 0, code, "showvminfo ignores its own failure to lock")
	assert.Contains(t, out, `VMState="poweroff"`)
	assert.Empty(t, mustRun(t, s, "list", "runningvms"), "list never locks")
	require.NoError(t, holder.Process.Kill())
	_ = holder.Wait()
	mustRun(t, s, "startvm", "win10", "--type", "headless")
}

func TestKilledClientReleasesItsLock(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	c.Timing.WriteHold = vboxsim.Duration(time.Hour)
	s := world(t, c)
	cmd := exec.Command(s.Bin, "modifyvm", "win10", "--description", "x")
	cmd.Env = append(os.Environ(), "VBOX_USER_HOME="+s.Home)
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return s.VM(t, "win10").Session.State == vboxsim.Locked }, time.Minute, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	assert.Equal(t, vboxsim.Unlocked, s.VM(t, "win10").Session.State)
}

func TestHangingPowerOffLeavesTheVMStopping(t *testing.T) {
	c := cfg("5.1.38r122592", "linux")
	c.Faults.HangPowerOff = true
	s := world(t, c)
	mustRun(t, s, "startvm", "win10", "--type", "headless")
	cmd := exec.Command(s.Bin, "controlvm", "win10", "poweroff")
	cmd.Env = append(os.Environ(), "VBOX_USER_HOME="+s.Home)
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return s.VM(t, "win10").State == "stopping" }, time.Minute, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	_, errOut, code := s.Run("controlvm", "win10", "poweroff")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "Invalid machine state: Stopping")
	mustRun(t, s, "startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, "aborted", s.VM(t, "win10").State)
}

func TestSnapshots(t *testing.T) {
	s := world(t, cfg("7.0.14r161095", "linux"), &vboxsim.VM{Name: "bare", UUID: uuid1, State: "poweroff",
		Session: vboxsim.Session{State: vboxsim.Unlocked}})
	out, _, code := s.Run("snapshot", "bare", "list", "--machinereadable")
	assert.Equal(t, 1, code)
	assert.Equal(t, "This machine does not have any snapshots\n", out)
	out, _, code = s.Run("snapshot", "bare", "restorecurrent")
	assert.Equal(t, 1, code)
	assert.Equal(t, "This machine does not have any snapshots\n", out)

	assert.Contains(t, mustRun(t, s, "snapshot", "bare", "take", "base"), "Snapshot taken. UUID: ")
	mustRun(t, s, "startvm", "bare", "--type", "headless")
	mustRun(t, s, "snapshot", "bare", "take", "live one", "--live")
	list := parser.ParseSnapshotList([]byte(mustRun(t, s, "snapshot", "bare", "list", "--machinereadable")))
	require.Len(t, list.List, 2)
	assert.Equal(t, "live one", list.CurrentName())
	assert.Equal(t, "SnapshotName-1", list.List[1].Node)

	out, errOut, code := s.Run("snapshot", "bare", "restore", "base")
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "Restoring snapshot 'base'")
	assert.Contains(t, errOut, "Cannot delete the current state of the running machine (machine state: Running)")

	mustRun(t, s, "controlvm", "bare", "poweroff")
	mustRun(t, s, "snapshot", "bare", "restore", "live one")
	assert.Equal(t, "saved", s.VM(t, "bare").State, "an online snapshot restores to saved")
	_, errOut, _ = s.Run("snapshot", "bare", "restore", "nope")
	assert.Contains(t, errOut, "Could not find a snapshot named 'nope'")
}

func TestFaults(t *testing.T) {
	c := cfg("6.1.38r153438", "windows")
	c.Faults.ServiceDown = 1
	c.Faults.AccessDenied = 1
	c.Faults.Garbage = 1
	s := world(t, c)

	_, errOut, code := s.Run("list", "vms")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "VBoxManage.exe: error: Failed to create the VirtualBox object!\r\n")
	assert.Contains(t, errOut, "CO_E_SERVER_EXEC_FAILURE")

	out, errOut, code := s.Run("showvminfo", "win10", "--machinereadable")
	assert.Equal(t, 0, code, "garbage comes with exit 0")
	_, err := parser.ParseVMInfo([]byte(out))
	assert.Error(t, err, errOut)

	out, errOut, code = s.Run("showvminfo", "win10", "--machinereadable")
	assert.Equal(t, 1, code)
	assert.Contains(t, out, `VMState="poweroff"`, "the dump gets half-way")
	assert.Contains(t, errOut, "The object is not ready")

	mustRun(t, s, "showvminfo", "win10", "--machinereadable")

	s.Update(t, func(w *vboxsim.World) { w.Config.Faults.StartFailExit0 = true })
	out, errOut, code = s.Run("startvm", "win10", "--type", "headless")
	assert.Equal(t, 0, code)
	assert.Contains(t, errOut, "VT-x is not available")
	assert.Equal(t, "poweroff", s.VM(t, "win10").State)
	assert.NotContains(t, out, "successfully started")
}

func TestGuestControl(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	// Long enough that the first call after the start finds the guest
	// booting on a busy machine too.
	c.Timing.GuestReady = vboxsim.Duration(2 * time.Second)
	vm := vboxsim.NewVM("win10", uuid1)
	vm.GuestUsers["analyst"] = "s3cret pass"
	s := world(t, c, vm)
	pw := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pw, []byte("s3cret pass\n"), 0o600))
	run := func(args ...string) (string, string, int) {
		return s.Run(append([]string{"guestcontrol", "win10", "run", "--username", "analyst", "--passwordfile", pw}, args...)...)
	}

	_, errOut, code := run("--exe", "/bin/echo", "--", "echo", "hi")
	assert.Equal(t, 1, code)
	assert.Equal(t, "VBoxManage: error: Machine \"win10\" is not running (currently powered off)!\n", errOut)

	mustRun(t, s, "startvm", "win10", "--type", "headless")
	_, errOut, code = run("--exe", "/bin/echo", "--", "echo", "hi")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "The guest execution service is not ready (yet)")

	require.Eventually(t, func() bool { _, _, code := run("--exe", "true"); return code == 0 }, time.Minute, 50*time.Millisecond)
	out, _, code := run("--exe", `C:\Windows\echo.exe`, "--", "echo", "hello", "world")
	assert.Equal(t, 0, code)
	assert.Equal(t, "hello world\n", out, "guest output is raw, not CRLF-converted")
	_, _, code = run("--exe", "exit", "--", "exit", "3")
	assert.Equal(t, 35, code)
	_, _, code = run("--exe", "exit", "--", "exit", "200")
	assert.Equal(t, 126, code)
	_, _, code = run("--exe", "sleep", "--timeout", "100", "--", "sleep", "5")
	assert.Equal(t, 20, code)

	_, errOut, code = s.Run("guestcontrol", "win10", "run", "--username", "analyst", "--password", "wrong", "--exe", "true")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "The specified user was not able to logon on guest")

	host := filepath.Join(t.TempDir(), "sample.bin")
	require.NoError(t, os.WriteFile(host, []byte("MZ\x00payload"), 0o644))
	_, errOut, code = s.Run("guestcontrol", "win10", "copyto", "--username", "analyst", "--passwordfile", pw, host, `C:\Users\analyst\sample.exe`)
	require.Equal(t, 0, code, errOut)
	out, _, _ = run("--exe", "cat", "--", "cat", `C:\Users\analyst\sample.exe`)
	assert.Equal(t, "MZ\x00payload", out)
	back := filepath.Join(t.TempDir(), "back.bin")
	_, errOut, code = s.Run("guestcontrol", "win10", "copyfrom", "--username", "analyst", "--passwordfile", pw, `C:\Users\analyst\sample.exe`, back)
	require.Equal(t, 0, code, errOut)
	data, err := os.ReadFile(back)
	require.NoError(t, err)
	assert.Equal(t, "MZ\x00payload", string(data))
}

func TestArgvLog(t *testing.T) {
	s := world(t, cfg("7.0.14r161095", "linux"))
	mustRun(t, s, "list", "vms")
	mustRun(t, s, "showvminfo", "win10", "--machinereadable")
	inv := s.Invocations(t)
	require.Len(t, inv, 2)
	assert.Equal(t, []string{"showvminfo", "win10", "--machinereadable"}, inv[1].Args)
}

// A hung VBoxManage --version runs until it is killed; the next call
// answers when the fault is used up.
func TestHangingVersion(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	c.Faults.HangVersion = 1
	s := world(t, c)
	cmd := exec.Command(s.Bin, "--version")
	cmd.Env = append(os.Environ(), "VBOX_USER_HOME="+s.Home)
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// The first call must have taken the hang (consumed the counter)
	// before it is killed: killed earlier, as a busy machine may do after
	// a fixed wait, it leaves the hang to the next call, which then hangs
	// the test.
	require.Eventually(t, func() bool {
		w, err := vboxsim.Load(s.Home)
		return err == nil && w.Config.Faults.HangVersion == 0
	}, time.Minute, 10*time.Millisecond, "the first --version never took the hang")
	select {
	case err := <-exited:
		t.Fatalf("--version returned (%v) instead of hanging", err)
	case <-time.After(300 * time.Millisecond):
	}
	require.NoError(t, cmd.Process.Kill())
	<-exited
	assert.Equal(t, "7.0.14r161095\n", mustRun(t, s, "--version"))
}

// A VM left starting comes up after the configured start time, unless its
// process is stuck; either way power-off is refused while it starts and
// emergencystop kills it.
func TestStartingVM(t *testing.T) {
	c := cfg("7.0.14r161095", "linux")
	// Long enough that the power-off below finds the VM starting on a busy
	// machine too.
	c.Timing.Start = vboxsim.Duration(2 * time.Second)
	vm := vboxsim.NewVM("win10", uuid1)
	vm.Boot("starting")
	s := world(t, c, vm)
	assert.Equal(t, "starting", s.VM(t, "win10").State)
	_, errOut, code := s.Run("controlvm", "win10", "poweroff")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "Invalid machine state: Starting")
	require.Eventually(t, func() bool { return s.VM(t, "win10").State == "running" }, time.Minute, 20*time.Millisecond)

	s.Update(t, func(w *vboxsim.World) {
		w.Config.Faults.HangStarting = true
		w.Find("win10").Boot("starting")
	})
	time.Sleep(2500 * time.Millisecond) // longer than the start time: nothing may happen
	assert.Equal(t, "starting", s.VM(t, "win10").State)
	mustRun(t, s, "startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, "aborted", s.VM(t, "win10").State)
}

// emergencystop kills only a VM process: the exiting process of a
// powered-off VM, but never the GUI's session.
func TestEmergencyStopOfAStoppedVMsSession(t *testing.T) {
	c := cfg("6.1.38r153438", "windows")
	c.Timing.Unlock = vboxsim.Duration(-1)
	s := world(t, c)
	mustRun(t, s, "startvm", "win10", "--type", "headless")
	mustRun(t, s, "controlvm", "win10", "poweroff")
	vm := s.VM(t, "win10")
	require.Equal(t, vboxsim.Unlocking, vm.Session.State)
	require.Equal(t, vboxsim.OwnerVM, vm.Session.Owner)
	mustRun(t, s, "startvm", "win10", "--type", "emergencystop")
	vm = s.VM(t, "win10")
	assert.Equal(t, vboxsim.Unlocked, vm.Session.State)
	assert.Equal(t, "poweroff", vm.State)

	mustRun(t, s, "startvm", "win10", "--type", "headless")
	mustRun(t, s, "controlvm", "win10", "poweroff")
	s.Update(t, func(w *vboxsim.World) { w.Config.Faults.ExitBeforeKill = true })
	_, errOut, code := s.Run("startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "VBoxManage.exe: error: The machine 'win10' is not locked by a session")
	assert.Equal(t, vboxsim.Unlocked, s.VM(t, "win10").Session.State, "the process exited by itself")

	s.Update(t, func(w *vboxsim.World) {
		w.Find("win10").Session = vboxsim.Session{State: vboxsim.Locked, Owner: vboxsim.OwnerGUI, Name: "GUI/Qt"}
	})
	_, errOut, code = s.Run("startvm", "win10", "--type", "emergencystop")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "VBoxManage.exe: error: The machine 'win10' does not have a VM process")
	assert.Equal(t, vboxsim.OwnerGUI, s.VM(t, "win10").Session.Owner)
}
