//go:build unix

package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// children returns the pids whose parent is pid, from /proc.
func children(t *testing.T, pid int) []int {
	t.Helper()
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Skip("no /proc on this host")
	}
	return childPids(pid)
}

// childPids returns the live pids whose parent is pid, from /proc.
func childPids(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) && fields[0] != "Z" {
			out = append(out, child)
		}
	}
	return out
}

func TestSignalsStopTheCommandAndKillThePlugins(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			conf := fmt.Sprintf(`state_dir = "state"
[plugins.fake]
path = %q
[plugins.fake.config.vms.slow]
[plugins.fake.config.vms.slow.faults]
slow = "1m"
`, fakeBin)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644))
			cmd := exec.Command(sandboxBin, "--config", filepath.Join(dir, "config.toml"), "vm", "status", "slow")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { _ = cmd.Process.Kill() })

			var plugins []int
			deadline := time.Now().Add(10 * time.Second)
			for len(plugins) == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond) // waiting for a foreign process to spawn; nothing to wait on
				plugins = children(t, cmd.Process.Pid)
			}
			require.NotEmpty(t, plugins, "the CLI launched its plugin")

			require.NoError(t, cmd.Process.Signal(sig))
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the CLI did not stop on " + sig.String())
			}
			want := map[syscall.Signal]int{syscall.SIGINT: 130, syscall.SIGTERM: 143}[sig]
			assert.Equal(t, want, cmd.ProcessState.ExitCode(), "128 plus the signal, as a shell reports it: %s", stderr.String())
			assert.Contains(t, stderr.String(), "interrupted")
			for _, pid := range plugins {
				assert.True(t, plugintest.Gone(pid), "plugin %d outlived the CLI", pid)
			}
		})
	}
}

// TestAnInterruptedRunCleansItsVMs interrupts `sandbox run` while every VM
// analyses: the VMs in use are cleaned before the command exits with 128
// plus the signal, and the summary says what happened.
func TestAnInterruptedRunCleansItsVMs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{{syscall.SIGINT, 130}, {syscall.SIGTERM, 143}} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			conf := runConfig(`[profiles.slow]
vms = ["win-a", "linux-a"]
sample_path = "/tmp/{name}"
command = ["sleep", "60"]
[profiles.slow.verdict]
malicious_exit_codes = [1]
`)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte("state_dir = \"state\"\n"+conf), 0o644))
			samples := t.TempDir()
			cmd := exec.Command(sandboxBin, "--config", filepath.Join(dir, "config.toml"), "--log-level", "info",
				"run", "--profile", "slow", textFile(t, samples, "a.txt", "a"), textFile(t, samples, "b.txt", "b"),
				textFile(t, samples, "c.txt", "c"))
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			stderrPipe, err := cmd.StderrPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { _ = cmd.Process.Kill() })

			// Wait, by the engine's log, until both VMs analyse.
			var stderr bytes.Buffer
			analysing, read := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(read)
				sc := bufio.NewScanner(stderrPipe)
				n := 0
				for sc.Scan() {
					stderr.WriteString(sc.Text() + "\n")
					if strings.Contains(sc.Text(), "sandbox.engine: analyzing") {
						if n++; n == 2 {
							close(analysing)
						}
					}
				}
			}()
			select {
			case <-analysing:
			case <-time.After(30 * time.Second):
				t.Fatal("the VMs never got to analyse")
			}
			plugins := children(t, cmd.Process.Pid)
			require.NoError(t, cmd.Process.Signal(tc.sig))
			done := make(chan error, 1)
			go func() {
				<-read // Wait closes the pipe: read it all first
				done <- cmd.Wait()
			}()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the CLI did not stop on " + tc.sig.String())
			}
			assert.Equal(t, tc.code, cmd.ProcessState.ExitCode(), stderr.String())
			assert.Regexp(t, `(?m)^a\.txt\s+slow\s+\S+\s+-\s+cancelled at analyzing`, stdout.String())
			assert.Regexp(t, `(?m)^c\.txt\s+slow\s+-\s+-\s+cancelled at queued`, stdout.String())
			assert.Contains(t, stdout.String(), "The run was interrupted; the VMs it was using were cleaned.")
			for _, pid := range plugins {
				assert.True(t, plugintest.Gone(pid), "plugin %d outlived the CLI", pid)
			}
			for _, vm := range []string{"win-a", "linux-a"} {
				st := sandboxIn(t, dir, conf, "--json", "vm", "status", vm)
				require.Equal(t, 0, st.code, st.stderr)
				assert.Contains(t, st.stdout, `"power": "off"`, vm)
				assert.Contains(t, st.stdout, `"lock": "unlocked"`, vm)
			}
		})
	}
}

// TestARunKilledMidTaskIsReconciledByTheNext kills `sandbox run` with
// SIGKILL while its VM analyses: the VM stays running and its lease names a
// dead holder. The next run finds that through reconciliation, cleans the
// VM before its own sample touches it, says so, and ends with the VM clean.
func TestARunKilledMidTaskIsReconciledByTheNext(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := runConfig(`[profiles.slow]
vms = ["linux-a"]
sample_path = "/tmp/{name}"
command = ["sleep", "60"]
[profiles.slow.verdict]
malicious_exit_codes = [1]
`)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte("state_dir = \"state\"\n"+conf), 0o644))
	samples := t.TempDir()
	cmd := exec.Command(sandboxBin, "--config", filepath.Join(dir, "config.toml"), "--log-level", "info",
		"run", "--profile", "slow", textFile(t, samples, "a.txt", "a"))
	stderrPipe, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	analysing := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderrPipe)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "sandbox.engine: analyzing") {
				once.Do(func() { close(analysing) })
			}
		}
	}()
	select {
	case <-analysing:
	case <-time.After(30 * time.Second):
		t.Fatal("the VM never got to analyse")
	}
	killedPid := cmd.Process.Pid
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()

	st := sandboxRaw(t, dir, "--json", "vm", "status", "linux-a")
	require.Equal(t, 0, st.code, st.stderr)
	require.Contains(t, st.stdout, `"power": "running"`, "the killed run left its VM running")

	r := sandboxRaw(t, dir, "--json", "run", "--profile", "clamav", textFile(t, samples, "b.txt", "b"))
	require.Equal(t, 0, r.code, r.stderr)
	var out runJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	res := out.Reports[0].Results[0]
	require.NotNil(t, res.Prepare)
	assert.True(t, res.Prepare.Reconciled, "the next run reconciled the VM")
	require.NotNil(t, res.Prepare.LeftBy, "and knew who left it")
	assert.Equal(t, killedPid, res.Prepare.LeftBy.PID)
	assert.Equal(t, engine.StepDone, res.State)

	text := sandboxRaw(t, dir, "run", "--profile", "clamav", textFile(t, samples, "c.txt", "c"))
	require.Equal(t, 0, text.code, text.stderr)
	assert.NotContains(t, text.stdout, "was left", "a clean VM is not reconciled again")
	st = sandboxRaw(t, dir, "--json", "vm", "status", "linux-a")
	assert.Contains(t, st.stdout, `"power": "off"`)
	assert.Contains(t, st.stdout, `"lock": "unlocked"`)
}
