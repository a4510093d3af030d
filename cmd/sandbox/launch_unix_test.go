//go:build unix

package main_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sleeperScript is a "plugin" whose child sleeps and holds its pipes, as
// a wrapper script around a broken plugin would; it writes the child's pid
// to pidFile.
func sleeperScript(t *testing.T) (path, pidFile string) {
	t.Helper()
	dir := t.TempDir()
	pidFile = filepath.Join(dir, "child.pid")
	path = filepath.Join(dir, "sleeper.sh")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\nsleep 1000 &\necho $! > "+pidFile+"\nwait\n"), 0o755))
	return path, pidFile
}

func readPid(t *testing.T, pidFile string) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool {
		data, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond)
	return pid
}

// A plugin path pointing at something that never handshakes fails within
// start_timeout, and nothing it started is left running.
func TestALaunchThatHangsFailsWithinStartTimeout(t *testing.T) {
	t.Parallel()
	path, pidFile := sleeperScript(t)
	start := time.Now()
	r := sandbox(t, fmt.Sprintf("[plugins.fake]\npath = %q\nstart_timeout = \"2s\"\n", path), "vm", "list")
	took := time.Since(start)
	assert.Equal(t, 1, r.code, r.stderr)
	assert.Less(t, took, 6*time.Second, "bounded by start_timeout (2s)")
	assert.Contains(t, r.stderr, "start_timeout")
	child := readPid(t, pidFile)
	assert.Eventually(t, func() bool { return plugintest.Gone(child) }, 2*time.Second, 10*time.Millisecond,
		"the plugin's child %d outlived the CLI", child)
}

// The first Ctrl-C ends a launch that hangs, at once, with exit status 130.
func TestTheFirstCtrlCEndsALaunchThatHangs(t *testing.T) {
	t.Parallel()
	path, pidFile := sleeperScript(t)
	dir := t.TempDir()
	conf := fmt.Sprintf("state_dir = \"state\"\n[plugins.fake]\npath = %q\nstart_timeout = \"5m\"\n", path)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
	cmd := exec.Command(sandboxBin, "--config", filepath.Join(dir, "config.toml"), "vm", "list")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	child := readPid(t, pidFile)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("the first Ctrl-C did not end the command")
	}
	assert.Equal(t, 130, cmd.ProcessState.ExitCode(), stderr.String())
	assert.Contains(t, stderr.String(), "interrupted")
	assert.Eventually(t, func() bool { return plugintest.Gone(child) }, 2*time.Second, 10*time.Millisecond,
		"the plugin's child %d outlived the CLI", child)
}

// conformance without --vm picks a VM it can use, not the first configured
// one whatever its state; and a SIGTERM ends a run promptly even on a VM in
// a state the driver has no word for.
func TestConformancePicksAUsableVMAndStopsOnSIGTERM(t *testing.T) {
	t.Parallel()
	conf := fmt.Sprintf(`[plugins.fake]
path = %q
env = ["GORACE=atexit_sleep_ms=0"]
[plugins.fake.config.timing]
start = "10ms"
poweroff = "10ms"
restore = "10ms"
unlock_after_stop = "20ms"
guest_ready = "10ms"
[plugins.fake.config.vms.a-odd]
raw_state = "teleporting"
snapshots = ["clean"]
[plugins.fake.config.vms.subject]
snapshots = ["clean"]
[vms.a-odd]
plugin = "fake"
[vms.subject]
plugin = "fake"
`, fakeBin)
	r := sandbox(t, conf, append([]string{"--json", "conformance", "--plugin", "fake", "--run", "^Status/"}, fastSuite...)...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"vm": "subject"`, "the VM in an unmapped state is passed over")
	assert.Contains(t, r.stderr, `a-odd`, "and the operator is told why")

	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte("state_dir = \"state\"\n"+conf), 0o644))
	cmd := exec.Command(sandboxBin, "--config", filepath.Join(dir, "config.toml"), "conformance", "--plugin", "fake", "--vm", "a-odd")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	time.Sleep(2 * time.Second) // let the suite get into its first check; nothing observable to wait on
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("conformance did not stop within 20s of SIGTERM")
	}
	assert.Equal(t, 143, cmd.ProcessState.ExitCode(), stderr.String())
}
