//go:build unix

package host_test

import (
	"context"
	"net"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// sleeperPlugin writes a script that is no plugin: it starts a child that
// sleeps, writes the child's pid to a file and waits for it, holding the
// plugin's stdout and stderr the whole time, as a broken plugin or a
// wrapper script would.
func sleeperPlugin(t *testing.T) (path, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	pidFile = filepath.Join(dir, "child.pid")
	path = filepath.Join(dir, "sleeper.sh")
	script := "#!/bin/sh\nsleep 1000 &\necho $! > " + pidFile + "\nwait\n"
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	return path, pidFile
}

// childPid waits for the sleeper's child to be running and returns its pid.
func childPid(t *testing.T, pidFile string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		data, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil && pid > 0
	}, 10*time.Second, 5*time.Millisecond, "the sleeper started its child")
	return pid
}

func TestALaunchThatNeverHandshakesEndsAtStartTimeoutWithItsChildren(t *testing.T) {
	path, pidFile := sleeperPlugin(t)
	h := newHost(t, map[string]config.Plugin{"s": {AutoMTLS: true, Path: path, StartTimeout: time.Second}}, "")
	start := time.Now()
	_, err := plug(t, h, "s").Status(context.Background(), "vm1")
	took := time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.Contains(t, err.Error(), "start_timeout")
	assert.Less(t, took, 4*time.Second, "bounded by start_timeout (1s), not by what the plugin's child does")
	child := childPid(t, pidFile)
	assert.True(t, plugintest.GoneWithin(child, 2*time.Second), "the plugin's child %d outlived the failed launch", child)
}

func TestCancelingALaunchEndsItAtOnceWithItsChildren(t *testing.T) {
	path, pidFile := sleeperPlugin(t)
	h := newHost(t, map[string]config.Plugin{"s": {AutoMTLS: true, Path: path, StartTimeout: time.Minute}}, "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := plug(t, h, "s").Status(ctx, "vm1")
		done <- err
	}()
	child := childPid(t, pidFile)
	canceled := time.Now()
	cancel()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, host.ErrLaunch)
		assert.Contains(t, err.Error(), "interrupted")
	case <-time.After(3 * time.Second):
		t.Fatal("the launch went on after its context ended")
	}
	t.Logf("launch ended %v after the cancel", time.Since(canceled).Round(time.Millisecond))
	assert.True(t, plugintest.GoneWithin(child, 2*time.Second), "the plugin's child %d outlived the canceled launch", child)
}

func TestClosingTheHostEndsALaunchUnderWay(t *testing.T) {
	path, pidFile := sleeperPlugin(t)
	h := newHost(t, map[string]config.Plugin{"s": {AutoMTLS: true, Path: path, StartTimeout: time.Minute}}, "")
	done := make(chan error, 1)
	go func() {
		_, err := plug(t, h, "s").Status(context.Background(), "vm1")
		done <- err
	}()
	child := childPid(t, pidFile)
	closed := make(chan struct{})
	go func() {
		h.Close()
		close(closed)
	}()
	for _, ch := range []<-chan struct{}{closed, waitErr(done)} {
		select {
		case <-ch:
		case <-time.After(3 * time.Second):
			t.Fatal("Close did not end the launch under way")
		}
	}
	assert.True(t, plugintest.GoneWithin(child, 2*time.Second), "the plugin's child %d outlived Close", child)
}

func waitErr(ch <-chan error) <-chan struct{} {
	out := make(chan struct{})
	go func() {
		<-ch
		close(out)
	}()
	return out
}

// A plugin and everything it starts die with it: killing it kills the
// processes it ran, so nothing it started is left working on a VM.
func TestKillingAPluginKillsWhatItStarted(t *testing.T) {
	cfg := scriptedPlugin(t)
	h := newHost(t, map[string]config.Plugin{"s": cfg}, "")
	p := plug(t, h, "s")
	res, err := p.Exec(context.Background(), "vm1", hypervisor.ExecRequest{Path: "spawn"})
	require.NoError(t, err)
	child, err := strconv.Atoi(string(res.Stdout))
	require.NoError(t, err)
	require.False(t, plugintest.Gone(child))
	p.Kill()
	assert.True(t, plugintest.GoneWithin(child, 2*time.Second), "the plugin's child %d outlived the plugin", child)
}

// socketOf returns the plugin's Unix socket, found through the directory
// the host gave it.
func socketOf(t *testing.T, pid int) (dir, socket string) {
	t.Helper()
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Skip("no /proc on this host")
	}
	for _, kv := range strings.Split(string(environ), "\x00") {
		if v, ok := strings.CutPrefix(kv, "PLUGIN_UNIX_SOCKET_DIR="); ok {
			dir = v
		}
	}
	require.NotEmpty(t, dir, "the plugin was not given a socket directory of its own")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	return dir, filepath.Join(dir, entries[0].Name())
}

// healthWithoutCertificate asks the plugin's gRPC health service over its
// socket with no client certificate, as a stranger would.
func healthWithoutCertificate(socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: "plugin"})
	return err
}

// Under umask 000 a socket is created world-writable; it must still be out
// of other users' reach, and useless without the host's certificate.
func TestThePluginSocketIsPrivateAndNeedsTheHostsCertificate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	p := plug(t, h, "s")
	_, err := p.Status(context.Background(), "vm1")
	require.NoError(t, err)
	dir, socket := socketOf(t, p.Pid())
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "the socket's directory is private")
	assert.Equal(t, uint32(os.Geteuid()), fi.Sys().(*syscall.Stat_t).Uid)
	assert.Error(t, healthWithoutCertificate(socket), "a client without the host's certificate was served")
	_, err = p.Status(context.Background(), "vm1")
	assert.NoError(t, err, "the host itself still gets through")

	p.Kill()
	_, err = os.Stat(dir)
	assert.ErrorIs(t, err, os.ErrNotExist, "the socket directory goes with the plugin")
}

// Another local user cannot even connect to the socket of a plugin
// launched under umask 000.
func TestAnotherUserCannotReachThePluginSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	old := syscall.Umask(0)
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	p := plug(t, h, "s")
	_, err := p.Status(context.Background(), "vm1")
	syscall.Umask(old)
	require.NoError(t, err)
	_, socket := socketOf(t, p.Pid())

	// A copy of this test binary that user nobody may run.
	dir, err := os.MkdirTemp("", "host-test-other-user-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	data, err := os.ReadFile(self(t))
	require.NoError(t, err)
	exe := filepath.Join(dir, "host.test")
	require.NoError(t, os.WriteFile(exe, data, 0o755))
	cmd := exec.Command(exe)
	cmd.Env = []string{envRole + "=dial", envSocket + "=" + socket, "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "refused:", "user nobody reached the plugin's socket")
	assert.Contains(t, string(out), "permission denied")
}

func TestAutoMTLSCanBeTurnedOff(t *testing.T) {
	cfg := scriptedPlugin(t)
	off := false
	cfg.AutoMTLS = off
	h := newHost(t, map[string]config.Plugin{"s": cfg}, "")
	p := plug(t, h, "s")
	_, err := p.Status(context.Background(), "vm1")
	require.NoError(t, err)
	_, socket := socketOf(t, p.Pid())
	assert.NoError(t, healthWithoutCertificate(socket), "without auto_mtls any client of the user gets through")
}

// A program that prints a handshake naming a socket nobody listens on is
// not a plugin that rejected its configuration: the error says what it
// is, names the socket and the setting to check.
func TestAHandshakeNamingAMissingSocketSaysSo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "liar.sh")
	sock := filepath.Join(dir, "nobody-listens.sock")
	script := "#!/bin/sh\necho '1|2|unix|" + sock + "|grpc|'\nsleep 30\n"
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	h := newHost(t, map[string]config.Plugin{"liar": {Path: path, StartTimeout: 10 * time.Second}}, "")
	_, err := plug(t, h, "liar").Status(context.Background(), "vm1")
	require.Error(t, err)
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.NotContains(t, err.Error(), "rejected its configuration")
	assert.Contains(t, err.Error(), sock)
	assert.Contains(t, err.Error(), "plugins.liar.path")
}
