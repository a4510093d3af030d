package qemu_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// floodRSS is the most memory the plugin process may hold while a guest
// floods it (contract §9.5): its own baseline (a Go program with gRPC,
// some 20-30 MiB) and one bounded reply of guest.max_output (1 MiB) with
// its copies, with room to spare. A driver that buffered a flood would
// pass it at once: 256 MiB on stdout, twice the bound before its base64
// on the wire, and a 1 GiB file.
const floodRSS = 128 << 20

// pluginPid is the process id of the plugin behind d.
func pluginPid(t *testing.T, d hypervisor.Driver) int {
	t.Helper()
	p, ok := d.(interface{ Pid() int })
	require.True(t, ok, "%T does not tell its plugin's pid", d)
	pid := p.Pid()
	require.NotZero(t, pid)
	return pid
}

// peakRSS returns the plugin's peak resident size since the last reset
// (VmHWM in /proc/PID/status), and resets it for the next measure.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	defer f.Close()
	var kib int64 = -1
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kib, err = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
		}
	}
	require.GreaterOrEqual(t, kib, int64(0), "no VmHWM in /proc/%d/status", pid)
	// "5" resets the peak to the current size (proc(5)).
	_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
	return kib << 10
}

// guestUp waits until the VM's guest runs commands.
func guestUp(t *testing.T, d hypervisor.Driver, vm string) {
	t.Helper()
	ctx := plugintest.Context(t, 90*time.Second)
	for {
		_, err := d.Exec(ctx, vm, hypervisor.ExecRequest{Path: "true"})
		if err == nil {
			return
		}
		require.Equal(t, hypervisor.CodeInvalidState, hypervisor.CodeOf(err), "%v", err)
		require.NoError(t, ctx.Err(), "the guest did not take commands: %v", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// The guest floods the plugin three ways: a command writing 256 MiB to
// stdout (the emulated guest takes minutes over a gigabyte, and twice the
// bound proves it as well), a 1 GB file copied out, and, with qemu-ga killed, a line that
// never ends written raw on the agent's channel. Each call answers within
// its deadline, the plugin's memory stays under floodRSS, and the VM is
// cleaned afterwards.
func TestGuestFloodsThePlugin(t *testing.T) {
	t.Parallel()
	r := newRig(t, guestVM("flood", "ready"))
	r.config = strings.Replace(r.config, "[plugins.qemu.config.vms.",
		"[plugins.qemu.config.guest]\nmax_copy_out = 16777216\nready_wait = \"5s\"\n[plugins.qemu.config.vms.", 1)
	require.NoError(t, os.WriteFile(r.file, []byte(r.config), 0o644))
	d := r.driver(t)
	pid := pluginPid(t, d)
	ctx := plugintest.Context(t, 10*time.Minute)
	require.NoError(t, d.Start(ctx, "flood"))
	guestUp(t, d, "flood")
	t.Logf("plugin RSS before the floods: %d MiB", peakRSS(t, pid)>>20)

	t.Run("stdout", func(t *testing.T) {
		const timeout = 3 * time.Minute
		req := hypervisor.ExecRequest{Path: "dd", Args: []string{"if=/dev/zero", "bs=1048576", "count=256"}, Timeout: timeout}
		begun := time.Now()
		res, err := d.Exec(ctx, "flood", req)
		took := time.Since(begun)
		rss := peakRSS(t, pid)
		t.Logf("256 MiB to stdout: answered in %s (kept %d bytes, truncated %t, error %v), peak plugin RSS %d MiB",
			took.Round(time.Millisecond), len(res.Stdout), res.StdoutTruncated, err, rss>>20)
		assert.Less(t, rss, int64(floodRSS))
		assert.Less(t, took, timeout+30*time.Second, "the call answers within its deadline")
		if err != nil {
			assert.Equal(t, hypervisor.CodeTimeout, hypervisor.CodeOf(err), "%v", err)
			return
		}
		assert.Len(t, res.Stdout, 1<<20, "guest.max_output's default")
		assert.True(t, res.StdoutTruncated, "the result says the rest was dropped")
		assert.Zero(t, res.ExitCode, "stderr %q", res.Stderr)
	})

	t.Run("copy-out", func(t *testing.T) {
		res, err := d.Exec(ctx, "flood", hypervisor.ExecRequest{Path: "dd",
			Args: []string{"if=/dev/zero", "of=/tmp/big", "bs=1048576", "count=0", "seek=1024"}})
		require.NoError(t, err)
		require.Zero(t, res.ExitCode, "%s", res.Stderr)
		dst := filepath.Join(t.TempDir(), "big")
		begun := time.Now()
		err = d.CopyOut(plugintest.Context(t, 2*time.Minute), "flood", "/tmp/big", dst)
		took := time.Since(begun)
		rss := peakRSS(t, pid)
		t.Logf("a 1 GiB guest file copied out: answered in %s, peak plugin RSS %d MiB: %v", took.Round(time.Millisecond), rss>>20, err)
		assert.Less(t, rss, int64(floodRSS))
		require.Error(t, err)
		assert.Equal(t, hypervisor.CodeFailed, hypervisor.CodeOf(err))
		assert.Contains(t, err.Error(), "larger than guest.max_copy_out")
		_, serr := os.Stat(dst)
		assert.ErrorIs(t, serr, os.ErrNotExist, "no host file is left")
		entries, _ := os.ReadDir(filepath.Dir(dst))
		assert.Empty(t, entries, "no partial file is left")
	})

	t.Run("agent-channel", func(t *testing.T) {
		// The agent's respawn loop and the agent go; then the channel is
		// the guest's: NUL bytes without a line end, for ever.
		script := `p=$(pidof qemu-ga); pp=$(cut -d' ' -f4 /proc/$p/stat); ` +
			`(sleep 1; kill -9 $pp $p; sleep 1; exec tr -d '\n' < /dev/zero > /dev/virtio-ports/org.qemu.guest_agent.0) </dev/null >/dev/null 2>&1 &`
		res, err := d.Exec(ctx, "flood", hypervisor.ExecRequest{Path: "sh", Args: []string{"-c", script}})
		require.NoError(t, err)
		require.Zero(t, res.ExitCode, "%s", res.Stderr)
		time.Sleep(4 * time.Second)
		const deadline = 20 * time.Second
		for range 3 {
			cctx, cancel := context.WithTimeout(ctx, deadline)
			begun := time.Now()
			_, err = d.Exec(cctx, "flood", hypervisor.ExecRequest{Path: "true"})
			cancel()
			took := time.Since(begun)
			t.Logf("a command with the channel flooded: answered in %s: %v", took.Round(time.Millisecond), err)
			require.Error(t, err)
			assert.Contains(t, []hypervisor.Code{hypervisor.CodeInvalidState, hypervisor.CodeTimeout}, hypervisor.CodeOf(err), "%v", err)
			assert.Less(t, took, deadline+5*time.Second, "the call answers within its deadline")
		}
		rss := peakRSS(t, pid)
		t.Logf("agent channel flooded: peak plugin RSS %d MiB", rss>>20)
		assert.Less(t, rss, int64(floodRSS))
	})

	// The VM is cleaned: off, unlocked, at its snapshot, no QEMU left.
	_, err := d.Cleanup(ctx, "flood", hypervisor.CleanupRequest{Restore: true})
	require.NoError(t, err)
	st, err := d.Status(ctx, "flood")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "%+v", st)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock)
	assert.Equal(t, "ready", st.CurrentSnapshot)
	if data, err := os.ReadFile(r.vmFile("flood", "qemu.pid")); err == nil {
		if qpid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && qpid > 0 {
			assert.ErrorIs(t, syscall.Kill(qpid, 0), syscall.ESRCH, "QEMU process %d is still there", qpid)
		}
	}
}
