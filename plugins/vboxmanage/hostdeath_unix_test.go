//go:build unix

package vboxmanage_test

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// When its host dies, the plugin has the SDK close the driver before it
// exits: the VBoxManage processes it ran (a guest program, a hung
// power-off) die with it and no guest password file stays behind.
func TestPluginDiesWithItsHost(t *testing.T) {
	t.Parallel()
	r, _ := prepare(t, profiles[2],
		withVMs(guestVM(vmName, vmUUID), guestVM(otherVM, otherUUID)),
		withFaults(func(f *vboxsim.Faults) { f.HangPowerOff = true }),
		withSetting("timeouts.poweroff", `"5m"`))
	r.sim.Update(t, func(w *vboxsim.World) {
		w.Find(vmName).Boot("")
		w.Find(otherVM).Boot("")
	})
	cmd := exec.Command(os.Args[0])
	// Under -race the runtime sleeps a second at exit; not this test's
	// business.
	cmd.Env = append(os.Environ(), envHostConfig+"="+r.file, envHostPlugin+"="+programs.path(t, pluginPkg),
		"GORACE=atexit_sleep_ms=0")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	f := strings.Fields(line)
	require.Len(t, f, 2, "host said %q", line)
	require.Equal(t, "pid", f[0], "host said %q", line)
	plugin, err := strconv.Atoi(f[1])
	require.NoError(t, err)
	children := []int{r.inFlight(t, "guestcontrol", "run"), r.inFlight(t, "controlvm", "poweroff")}
	require.Eventually(t, func() bool {
		left, err := os.ReadDir(r.tmp)
		return err == nil && len(left) == 1
	}, 10*time.Second, 5*time.Millisecond, "the guest program's password file is on disk")

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	assert.Eventually(t, func() bool { return plugintest.Gone(plugin) }, 30*time.Second, 5*time.Millisecond,
		"the plugin exits with its host")
	for _, pid := range children {
		assert.Eventually(t, func() bool { return plugintest.Gone(pid) }, time.Second, 5*time.Millisecond,
			"VBoxManage %d dies with the plugin", pid)
	}
	left, err := os.ReadDir(r.tmp)
	require.NoError(t, err)
	assert.Empty(t, left, "no password file stays behind")
}
