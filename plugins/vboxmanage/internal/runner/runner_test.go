package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary doubles as the program the runner starts: with
// RUNNER_HELPER set it behaves as its first argument says and exits.
func TestMain(m *testing.M) {
	if os.Getenv("RUNNER_HELPER") == "1" {
		helper(os.Args[1:])
		return
	}
	os.Exit(m.Run())
}

func helper(args []string) {
	switch args[0] {
	case "args":
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{"args": args[1:], "lc_all": os.Getenv("LC_ALL"), "home": os.Getenv("VBOX_USER_HOME")})
	case "crlf":
		fmt.Print("a=\"1\"\r\nb=\"2\"\r\n")
		fmt.Fprint(os.Stderr, "0%...100%\r\n")
	case "error-exit0":
		fmt.Fprintln(os.Stderr, "VBoxManage.exe: error: VT-x is not available (VERR_VMX_NO_VMX)")
	case "fail":
		fmt.Fprintln(os.Stderr, "VBoxManage: error: Could not find a registered machine named 'x'")
		os.Exit(1)
	case "hang":
		fmt.Printf("%d\n", os.Getpid())
		fmt.Fprint(os.Stderr, "0%...")
		time.Sleep(time.Hour)
	case "environ":
		_ = json.NewEncoder(os.Stdout).Encode(os.Environ())
	case "hangpid":
		// Write the pid where the test looks, then hang until killed.
		_ = os.WriteFile(args[1], []byte(fmt.Sprint(os.Getpid())), 0o600)
		time.Sleep(time.Hour)
	case "parent":
		// A plugin: a runner of its own running a VBoxManage that hangs.
		exe, _ := os.Executable()
		r := New(Options{Path: exe, Env: []string{"RUNNER_HELPER=1", "GORACE=atexit_sleep_ms=0"}})
		_, _ = r.Run(context.Background(), Call{Args: []string{"hangpid", args[1]}})
	case "flood":
		chunk := bytes.Repeat([]byte("x"), 1<<16)
		for range 64 {
			os.Stdout.Write(chunk)
		}
	}
	os.Exit(0)
}

func newRunner(t *testing.T, o Options) *Runner {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	o.Path = exe
	// A race-enabled helper would otherwise sleep a second at exit.
	o.Env = append([]string{"RUNNER_HELPER=1", "GORACE=atexit_sleep_ms=0"}, o.Env...)
	return New(o)
}

func TestArgumentsAreDataNotShell(t *testing.T) {
	r := newRunner(t, Options{Env: []string{"VBOX_USER_HOME=/tmp/vbox home", "LC_ALL=de_DE.UTF-8"}})
	weird := []string{`win 10 "x"; rm -rf / $(id) | tee`, "", "--", `C:\Users\a b\`, "{7e261a39-d356-4eb1-a8ed-75675b149241}"}
	res, err := r.Run(context.Background(), Call{Args: append([]string{"args"}, weird...)})
	require.NoError(t, err)
	var got struct {
		Args  []string `json:"args"`
		LCAll string   `json:"lc_all"`
		Home  string   `json:"home"`
	}
	require.NoError(t, json.Unmarshal(res.Stdout, &got))
	assert.Equal(t, weird, got.Args)
	assert.Equal(t, "C", got.LCAll, "LC_ALL=C wins over anything configured")
	assert.Equal(t, "/tmp/vbox home", got.Home)
	assert.Equal(t, uint64(1), r.Invocations())
}

func TestCRLFIsNormalizedUnlessRaw(t *testing.T) {
	r := newRunner(t, Options{})
	res, err := r.Run(context.Background(), Call{Args: []string{"crlf"}})
	require.NoError(t, err)
	assert.Equal(t, "a=\"1\"\nb=\"2\"\n", string(res.Stdout))
	assert.Equal(t, "0%...100%\n", string(res.Stderr))

	res, err = r.Run(context.Background(), Call{Args: []string{"crlf"}, Raw: true})
	require.NoError(t, err)
	assert.Equal(t, "a=\"1\"\r\nb=\"2\"\r\n", string(res.Stdout))
}

func TestErrorLineWithExitZeroIsFailure(t *testing.T) {
	r := newRunner(t, Options{})
	res, err := r.Run(context.Background(), Call{Args: []string{"error-exit0"}})
	var ee *ExitError
	require.True(t, errors.As(err, &ee), "%v", err)
	assert.Equal(t, 0, res.ExitCode)
	assert.Contains(t, err.Error(), "VT-x is not available")

	_, err = r.Run(context.Background(), Call{Args: []string{"error-exit0"}, Raw: true})
	assert.NoError(t, err, "guest stderr is the guest's business")
}

func TestNonZeroExitIsFailure(t *testing.T) {
	r := newRunner(t, Options{})
	res, err := r.Run(context.Background(), Call{Args: []string{"fail"}})
	var ee *ExitError
	require.True(t, errors.As(err, &ee))
	assert.Equal(t, 1, res.ExitCode)
	assert.Equal(t, "VBoxManage fail: exit status 1: Could not find a registered machine named 'x'", err.Error())
}

func TestHangingProcessIsKilledAtItsDeadline(t *testing.T) {
	r := newRunner(t, Options{})
	start := time.Now()
	// The deadline leaves a busy machine time to launch the helper and let
	// it print before the kill, which the checks below look for; the kill
	// itself must come at the deadline, not when the helper's hour is up.
	const deadline = 3 * time.Second
	_, err := r.Run(context.Background(), Call{Args: []string{"hang"}, Timeout: deadline})
	elapsed := time.Since(start)
	var te *TimeoutError
	require.True(t, errors.As(err, &te), "%v", err)
	assert.GreaterOrEqual(t, elapsed, deadline)
	assert.Less(t, elapsed, deadline+time.Minute)
	assert.Contains(t, string(te.Result.Stderr), "0%...", "what it printed before dying is kept")
	pid := 0
	_, _ = fmt.Sscanf(string(te.Result.Stdout), "%d", &pid)
	require.NotZero(t, pid)
	assert.False(t, plugintest.Alive(pid), "the process is gone")

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = r.Run(ctx, Call{Args: []string{"hang"}, Timeout: time.Minute})
	assert.True(t, errors.As(err, &te), "ctx's deadline kills too: %v", err)
}

func TestCancelIsNotATimeout(t *testing.T) {
	r := newRunner(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := r.Run(ctx, Call{Args: []string{"hang"}})
	assert.ErrorIs(t, err, context.Canceled)
}

func TestOutputIsBounded(t *testing.T) {
	r := newRunner(t, Options{MaxStdout: 1000})
	res, err := r.Run(context.Background(), Call{Args: []string{"flood"}})
	require.NoError(t, err)
	assert.Len(t, res.Stdout, 1000)
	assert.True(t, res.Truncated)
}

func TestMissingExecutableIsStartError(t *testing.T) {
	var logs bytes.Buffer
	r := New(Options{Path: "/nonexistent/VBoxManage", Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Debug})})
	_, err := r.Run(context.Background(), Call{Args: []string{"--version"}})
	var se *StartError
	require.True(t, errors.As(err, &se), "%v", err)
	assert.True(t, strings.Contains(err.Error(), "/nonexistent/VBoxManage"))
	assert.Contains(t, logs.String(), "did not start")
}

// VBoxManage gets the environment it needs and nothing else of the
// plugin's: no guest password variable, no secret the plugin was given.
func TestChildrenGetOnlyTheEnvironmentTheyNeed(t *testing.T) {
	t.Setenv("SANDBOX_GUEST_PW", "s3cret")
	t.Setenv("SOME_TOKEN", "leak")
	t.Setenv("VBOX_USER_HOME", "/home/ci/vbox")
	t.Setenv("PATH", "/usr/bin:/bin")
	r := newRunner(t, Options{Env: []string{"VBOX_INSTALL_PATH=/opt/vbox"}, Drop: []string{"SANDBOX_GUEST_PW"}})
	res, err := r.Run(context.Background(), Call{Args: []string{"environ"}})
	require.NoError(t, err)
	var env []string
	require.NoError(t, json.Unmarshal(res.Stdout, &env))
	assert.Contains(t, env, "PATH=/usr/bin:/bin")
	assert.Contains(t, env, "VBOX_USER_HOME=/home/ci/vbox", "VirtualBox's own variables pass")
	assert.Contains(t, env, "VBOX_INSTALL_PATH=/opt/vbox", "configured ones too")
	assert.Contains(t, env, "LC_ALL=C")
	for _, kv := range env {
		assert.NotContains(t, kv, "s3cret")
		assert.False(t, strings.HasPrefix(kv, "SOME_TOKEN="), "%s reached VBoxManage", kv)
	}

	t.Setenv("VBOX_GUEST_PASSWORD", "s3cret")
	r = newRunner(t, Options{Drop: []string{"VBOX_GUEST_PASSWORD"}})
	res, err = r.Run(context.Background(), Call{Args: []string{"environ"}})
	require.NoError(t, err)
	assert.NotContains(t, string(res.Stdout), "s3cret", "a password variable is dropped even when its name looks like VirtualBox's")
}
