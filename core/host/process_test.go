//go:build unix

package host_test

import (
	"bufio"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// These tests kill processes with signals and read /proc, so they run on
// Unix hosts only.

func TestPluginKilledMidCallFailsFastAndIsRelaunched(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	p := plug(t, h, "s")
	ctx := context.Background()
	_, err := p.Status(ctx, "vm1")
	require.NoError(t, err)
	pid := p.Pid()
	require.NotZero(t, pid)

	type result struct {
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		err := p.Stop(ctx, "hang", hypervisor.StopPowerOff)
		done <- result{err: err, at: time.Now()}
	}()
	h.log.waitFor(t, "call in flight", 5*time.Second)
	killedAt := time.Now()
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	r := <-done
	took := r.at.Sub(killedAt)
	assert.Less(t, took, 100*time.Millisecond, "the call in flight fails within 100ms")
	assert.ErrorIs(t, r.err, host.ErrPluginExited)
	assert.ErrorIs(t, r.err, hypervisor.ErrUnavailable)
	assert.Contains(t, r.err.Error(), "relaunched on the next call")
	t.Logf("call failed %v after SIGKILL", took)

	st, err := p.Status(ctx, "vm1")
	require.NoError(t, err, "the next call relaunches the plugin")
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.NotEqual(t, pid, p.Pid())
	h.Close()
}

func TestCloseKillsEveryPlugin(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"a": scriptedPlugin(t), "b": scriptedPlugin(t)}, "")
	var pids []int
	for _, name := range []string{"a", "b"} {
		p := plug(t, h, name)
		_, err := p.Status(context.Background(), "vm1")
		require.NoError(t, err)
		pids = append(pids, p.Pid())
	}
	h.Close()
	for _, pid := range pids {
		assert.True(t, plugintest.Gone(pid), "plugin %d survived Close", pid)
	}
	_, err := h.Plugin("a")
	assert.Error(t, err, "a closed host launches nothing")
}

// startHost runs a host process (runHost) that launches one plugin, and
// returns it with the plugin's pid.
func startHost(t *testing.T) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(self(t))
	// Under -race the runtime sleeps a second at exit (atexit_sleep_ms);
	// that is the detector's delay, not the watchdog's, so turn it off.
	cmd.Env = append(os.Environ(), envRole+"=host", "GORACE=atexit_sleep_ms=0")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	f := strings.Fields(line)
	require.Len(t, f, 2, "host said %q", line)
	require.Equal(t, "pid", f[0], "host said %q", line)
	pid, err := strconv.Atoi(f[1])
	require.NoError(t, err)
	return cmd, pid
}

func TestPluginsDieWithAKilledHost(t *testing.T) {
	cmd, pid := startHost(t)
	require.False(t, plugintest.Gone(pid))

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	_ = cmd.Wait()
	deadline := killed.Add(time.Second)
	for !plugintest.Gone(pid) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a foreign process: there is nothing to wait on
	}
	assert.True(t, plugintest.Gone(pid), "plugin %d outlived its killed host by more than 1s", pid)
	t.Logf("plugin gone %v after the host was killed", time.Since(killed).Round(time.Millisecond))
}

// A host killed with SIGKILL cannot remove its plugins' socket
// directories; the next host does, and a host that closes leaves none.
func TestAKilledHostsSocketDirIsRemovedByTheNext(t *testing.T) {
	tmp, err := os.MkdirTemp("", "sk") // short: the sockets' paths must stay under 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	cmd, pid := startHost(t)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	require.True(t, plugintest.GoneWithin(pid, 5*time.Second))
	left := leftovers(t, tmp)
	require.NotEmpty(t, left, "the killed host's plugin socket directory is there")

	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	_, err = plug(t, h, "s").Status(context.Background(), "vm1")
	require.NoError(t, err)
	for _, dir := range left {
		assert.NoDirExists(t, dir, "the next host removes the socket directory of the killed one")
	}
	h.Close()
	assert.Empty(t, leftovers(t, tmp), "a host that closed leaves no socket directory")
}

// leftovers are the plugin socket directories under tmp.
func leftovers(t *testing.T, tmp string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(tmp, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), "plugin") {
			dirs = append(dirs, path)
		}
		return err
	})
	require.NoError(t, err)
	return dirs
}

// Hosts of one process each have a socket directory of their own: one
// that closes leaves the other's plugin sockets where they are, for the
// plugins it relaunches and for the launches under way.
func TestTwoHostsOfAProcessKeepTheirOwnSockets(t *testing.T) {
	tmp, err := os.MkdirTemp("", "sk") // short: the sockets' paths must stay under 108 bytes
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	a := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	b := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	for _, h := range []testHost{a, b} {
		_, err := plug(t, h, "s").Status(context.Background(), "vm1")
		require.NoError(t, err)
	}
	require.Len(t, leftovers(t, tmp), 2, "one socket directory per plugin")
	a.Close()
	left := leftovers(t, tmp)
	require.Len(t, left, 1, "the closed host's socket directory went, the other's stayed")
	entries, err := os.ReadDir(left[0])
	require.NoError(t, err)
	assert.NotEmpty(t, entries, "the other host's plugin socket is still there")
	_, err = plug(t, b, "s").Status(context.Background(), "vm1")
	require.NoError(t, err)
}
