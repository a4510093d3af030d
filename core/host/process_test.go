//go:build unix

package host_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
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

func TestPluginsDieWithAKilledHost(t *testing.T) {
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
