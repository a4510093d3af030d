//go:build !windows

package sdk

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Launched with envRole set, the test binary plays a part in
// TestAPluginWhoseHostDiesNoticesItByItsParent instead of running tests:
// "host" starts a "plugin" and dies once the plugin watches it; "plugin"
// watches its parent as a plugin passed no host pipe does, and writes the
// file gone when it notices.
const (
	envRole = "SANDBOX_SDK_TEST_ROLE"
	envDir  = "SANDBOX_SDK_TEST_DIR"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "host":
		os.Exit(playHost(os.Getenv(envDir)))
	case "plugin":
		dir := os.Getenv(envDir)
		_ = os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		watchParent(func() {
			_ = os.WriteFile(filepath.Join(dir, "gone"), nil, 0o644)
			os.Exit(0)
		})
		os.Stdout.WriteString("watching\n")
		time.Sleep(time.Minute) // a watch that never fires still ends
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// playHost starts the plugin, checks that it does not think its host gone
// while the host lives, and returns (the host dies) without waiting for it.
func playHost(dir string) int {
	exe, err := os.Executable()
	if err != nil {
		return 2
	}
	plugin := exec.Command(exe)
	plugin.Env = append(os.Environ(), envRole+"=plugin")
	out, err := plugin.StdoutPipe()
	if err != nil || plugin.Start() != nil {
		return 2
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "watching\n" {
		return 2
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(dir, "gone")); err == nil {
		return 3 // it took a live host for a dead one
	}
	return 0
}

// A plugin launched by a host that passes no pipe (a foreign host) exits
// by itself soon after its host dies: it sees it is no longer its parent's
// child.
func TestAPluginWhoseHostDiesNoticesItByItsParent(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	require.NoError(t, err)
	host := exec.Command(exe)
	host.Env = append(os.Environ(), envRole+"=host", envDir+"="+dir)
	out, err := host.CombinedOutput()
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(dir, "pid")); err == nil {
			if pid, err := strconv.Atoi(string(b)); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		t.Fatal("the plugin took its living host for a dead one")
	}
	require.NoError(t, err, "the host: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = wait.Until(ctx, wait.Policy{Initial: 10 * time.Millisecond}, func(context.Context) (bool, error) {
		_, err := os.Stat(filepath.Join(dir, "gone"))
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	})
	require.NoError(t, err, "the plugin did not notice within 10s that its host died")
}
