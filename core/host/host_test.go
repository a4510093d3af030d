package host_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/host"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// logSink collects the host's log and lets a test wait for a line.
type logSink struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	wake chan struct{}
}

func newLogSink() *logSink { return &logSink{wake: make(chan struct{}, 1)} }

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *logSink) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// waitFor blocks until the log contains s or the deadline passes.
func (l *logSink) waitFor(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for !strings.Contains(l.String(), s) {
		select {
		case <-l.wake:
		case <-deadline:
			t.Fatalf("log never showed %q; log:\n%s", s, l.String())
		}
	}
}

func self(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	return exe
}

func scriptedPlugin(t *testing.T, args ...string) config.Plugin {
	// GORACE: a race-enabled plugin otherwise sleeps a second at exit.
	return config.Plugin{AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: self(t), Args: args, Env: []string{envRole + "=plugin", "GORACE=atexit_sleep_ms=0"}}
}

type testHost struct {
	*host.Host
	log *logSink
}

func newHost(t *testing.T, plugins map[string]config.Plugin, configText string) testHost {
	t.Helper()
	sink := newLogSink()
	h := host.New(host.Options{
		Plugins: plugins,
		File:    filepath.Join(t.TempDir(), "config.toml"),
		Data:    []byte(configText),
		Logger:  hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Debug, Output: sink}),
	})
	t.Cleanup(h.Close)
	return testHost{Host: h, log: sink}
}

func plug(t *testing.T, h testHost, name string) *host.Plugin {
	t.Helper()
	p, err := h.Plugin(name)
	require.NoError(t, err)
	return p
}

func TestHostNegotiatesProtocol2WithACurrentPlugin(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	d, err := plug(t, h, "s").Describe(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 2, d.Protocol)
	assert.Equal(t, "scripted", d.Info.Name)
	assert.True(t, d.Info.Capabilities.Has("future.capability"), "a capability the host does not know is kept")
	assert.NotZero(t, d.Pid)
}

func TestHostNegotiatesProtocol1WithAV1OnlyPlugin(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t, "--max-protocol=1")}, "")
	p := plug(t, h, "s")
	ctx := context.Background()
	d, err := p.Describe(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, d.Protocol)
	assert.Equal(t, hypervisor.NewCapabilities(hypervisor.V1Capabilities...), d.Info.Capabilities)
	assert.Equal(t, 1, d.Info.ContractVersion)

	_, err = p.ListVMs(ctx)
	assert.ErrorIs(t, err, hypervisor.ErrUnsupported, "v1 cannot list")
	assert.ErrorIs(t, p.Stop(ctx, "vm1", hypervisor.StopACPI), hypervisor.ErrUnsupported)
	assert.ErrorIs(t, p.Unlock(ctx, "vm1"), hypervisor.ErrUnsupported)

	require.NoError(t, p.Start(ctx, "vm1"))
	st, err := p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerRunning, st.Power)
	assert.Equal(t, hypervisor.LockUnknown, st.Lock, "v1 has no lock reporting")
	require.NoError(t, p.Stop(ctx, "vm1", hypervisor.StopPowerOff))
	require.NoError(t, p.Restore(ctx, "vm1", "clean"))
	st, err = p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerOff, st.Power)
	assert.Equal(t, "clean", st.CurrentSnapshot)
}

func TestHostRefusesAPluginWithNoCommonProtocol(t *testing.T) {
	cfg := config.Plugin{AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: self(t), Env: []string{envRole + "=plugin-v3"}}
	h := newHost(t, map[string]config.Plugin{"future": cfg}, "")
	p := plug(t, h, "future")
	start := time.Now()
	_, err := p.Describe(context.Background())
	require.Error(t, err)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.ErrorIs(t, err, hypervisor.ErrUnavailable)
	assert.Contains(t, err.Error(), "speaks no protocol version this sandbox knows")
	assert.Zero(t, p.Pid(), "the failed plugin is not kept")
}

func TestEveryErrorCodeCrossesTheWire(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	p := plug(t, h, "s")
	for vm, code := range map[string]hypervisor.Code{
		"missing": hypervisor.CodeNotFound, "locked": hypervisor.CodeLocked, "wrong-state": hypervisor.CodeInvalidState,
		"no-support": hypervisor.CodeUnsupported, "too-slow": hypervisor.CodeTimeout, "no-hv": hypervisor.CodeUnavailable,
		"broken": hypervisor.CodeFailed,
	} {
		t.Run(code.String(), func(t *testing.T) {
			err := p.Restore(context.Background(), vm, "x")
			var he *hypervisor.Error
			require.ErrorAs(t, err, &he)
			assert.Equal(t, code, he.Code)
			assert.Equal(t, vm, he.VM)
			assert.Equal(t, hypervisor.OpRestore, he.Op)
			assert.Equal(t, "scripted "+code.String()+" for "+vm, he.Message)
			assert.Equal(t, code, hypervisor.CodeOf(err))
			assert.NotErrorIs(t, err, host.ErrPluginExited)
		})
	}
}

func TestEveryOperationCrossesTheWire(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	p := plug(t, h, "s")
	ctx := context.Background()

	vms, err := p.ListVMs(ctx)
	require.NoError(t, err)
	assert.Equal(t, []hypervisor.VM{{Name: "vm1", ID: "id-1", Power: hypervisor.PowerOff},
		{Name: "vm2", Power: hypervisor.PowerUnknown}}, vms)

	require.NoError(t, p.Start(ctx, "vm1"))
	st, err := p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Status{VM: "vm1", Power: hypervisor.PowerRunning, Raw: "running", Lock: hypervisor.LockLocked,
		StateChanged: time.Date(2026, 1, 2, 3, 4, 5, 6000000, time.UTC)}, st)

	require.NoError(t, p.Stop(ctx, "vm1", hypervisor.StopPowerOff))
	require.NoError(t, p.Restore(ctx, "vm1", ""))
	st, err = p.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, "current", st.CurrentSnapshot)

	res, err := p.Exec(ctx, "vm1", hypervisor.ExecRequest{Path: "/bin/echo", Args: []string{"a", "b"}, Timeout: 3 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, hypervisor.ExecResult{ExitCode: 2, Stdout: []byte("a b"), Stderr: []byte("3s")}, res)

	ch, err := p.Watch(ctx, "vm1")
	require.NoError(t, err)
	var raws []string
	for s := range ch {
		raws = append(raws, s.Raw)
	}
	assert.Equal(t, []string{"step0", "step1", "step2"}, raws)

	_, err = p.Watch(ctx, "missing")
	assert.ErrorIs(t, err, hypervisor.ErrNotFound, "a watch that cannot start is an error, not a closed channel")

	assert.ErrorIs(t, p.Unlock(ctx, "vm1"), hypervisor.ErrUnsupported, "an operation the driver lacks")
	_, err = p.Cleanup(ctx, "vm1", hypervisor.CleanupRequest{})
	assert.ErrorIs(t, err, hypervisor.ErrUnsupported)
	assert.ErrorIs(t, p.CopyIn(ctx, "vm1", "a", "b"), hypervisor.ErrUnsupported)
	assert.ErrorIs(t, p.CopyOut(ctx, "vm1", "a", "b"), hypervisor.ErrUnsupported)
}

func TestStatesTheHostDoesNotKnowBecomeUnknown(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	st, err := plug(t, h, "s").Status(context.Background(), "odd")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.PowerUnknown, st.Power, "never mistaken for off")
	assert.Equal(t, "levitating", st.Raw, "the driver's word is kept")
	assert.Equal(t, hypervisor.LockUnknown, st.Lock)
}

func TestCallerDeadlineReachesThePlugin(t *testing.T) {
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, "")
	p := plug(t, h, "s")
	_, err := p.Status(context.Background(), "vm1") // launch outside the measured call
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = p.Status(ctx, "hang")
	assert.ErrorIs(t, err, hypervisor.ErrTimeout)
	assert.Less(t, time.Since(start), 600*time.Millisecond)
	_, err = p.Status(context.Background(), "vm1")
	assert.NoError(t, err, "a timed-out call leaves the plugin usable")
}

func TestChecksumIsCheckedBeforeLaunch(t *testing.T) {
	exe := self(t)
	data, err := os.ReadFile(exe)
	require.NoError(t, err)
	sum := sha256.Sum256(data)

	good := scriptedPlugin(t)
	good.SHA256 = hex.EncodeToString(sum[:])
	bad := scriptedPlugin(t)
	bad.SHA256 = strings.Repeat("ab", 32)
	h := newHost(t, map[string]config.Plugin{"good": good, "bad": bad}, "")

	_, err = plug(t, h, "good").Status(context.Background(), "vm1")
	assert.NoError(t, err)
	_, err = plug(t, h, "bad").Status(context.Background(), "vm1")
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.Contains(t, err.Error(), "does not match plugins.bad.sha256")
	assert.Zero(t, plug(t, h, "bad").Pid())
}

func TestMissingExecutableSaysWhatToDo(t *testing.T) {
	missing := func(path string) config.Plugin {
		return config.Plugin{AutoMTLS: true, StartTimeout: config.DefaultPluginStartTimeout, Path: path}
	}
	h := newHost(t, map[string]config.Plugin{
		"gone":   missing("bin/sandbox-plugin-qemu"),
		"procvm": missing("../procvm/sandbox-plugin-procvm"),
	}, "")
	_, err := plug(t, h, "gone").Status(context.Background(), "vm1")
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.Contains(t, err.Error(), "bin/sandbox-plugin-qemu (plugins.gone.path in ")
	assert.Contains(t, err.Error(), "build it with `make build` in sandbox's source tree, or fix the path",
		"one of sandbox's own plugins is built with the tree")

	_, err = plug(t, h, "procvm").Status(context.Background(), "vm1")
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.Contains(t, err.Error(), "procvm/sandbox-plugin-procvm (plugins.procvm.path in ")
	assert.Contains(t, err.Error(), "build it as its own documentation says, or fix the path")
	assert.NotContains(t, err.Error(), "make build", "a third party's plugin is not built by sandbox's Makefile")

	_, err = h.Plugin("nope")
	assert.ErrorContains(t, err, `no plugin named "nope"`)
	assert.ErrorContains(t, err, "configured: gone")
}

func TestPluginConfigErrorNamesFileLineAndKeyAndKillsThePlugin(t *testing.T) {
	conf := "[plugins.s]\npath = \"x\"\n[plugins.s.config]\ngreting = \"hi\"\n"
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, conf)
	p := plug(t, h, "s")
	_, err := p.Status(context.Background(), "vm1")
	require.Error(t, err)
	assert.ErrorIs(t, err, host.ErrLaunch)
	assert.Contains(t, err.Error(), "config.toml:4: plugins.s.config.greting: unknown key; "+
		"check its spelling against the plugin's own documentation")
	assert.NotContains(t, err.Error(), "docs/configuration.md", "sandbox's own docs know nothing of a third party's keys")
	assert.Zero(t, p.Pid())
	assert.NotContains(t, h.log.String(), "plugin launched")
}

func TestAPluginsOwnConfigErrorNamesItsTable(t *testing.T) {
	conf := "[plugins.s.config]\ngreeting = \"refuse\"\n"
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, conf)
	_, err := plug(t, h, "s").Status(context.Background(), "vm1")
	require.ErrorIs(t, err, host.ErrLaunch)
	assert.Regexp(t, `plugin "s" could not start: it rejected its configuration, its table \[plugins\.s\.config\] in \S+/config\.toml: `+
		`the scripted driver will not greet anyone`, err.Error())
}

func TestPluginLogLinesReachTheHostLogTagged(t *testing.T) {
	conf := "[plugins.s.config]\ngreeting = \"hello\"\n"
	h := newHost(t, map[string]config.Plugin{"s": scriptedPlugin(t)}, conf)
	_, err := plug(t, h, "s").Status(context.Background(), "vm1")
	require.NoError(t, err)
	h.log.waitFor(t, "scripted driver configured", 2*time.Second)
	for _, line := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(line, "scripted driver configured") {
			assert.Contains(t, line, "sandbox.s", "tagged with the plugin name")
			assert.Contains(t, line, "greeting=hello")
		}
	}
}

func TestAPluginsStrayOutputIsAWarningWithItsLine(t *testing.T) {
	sink := newLogSink()
	h := host.New(host.Options{
		Plugins: map[string]config.Plugin{"chatty": scriptedPlugin(t)},
		File:    filepath.Join(t.TempDir(), "config.toml"),
		// The default level: a stray line must show without --log-level.
		Logger: hclog.New(&hclog.LoggerOptions{Name: "sandbox", Level: hclog.Info, Output: sink}),
	})
	t.Cleanup(h.Close)
	p, err := h.Plugin("chatty")
	require.NoError(t, err)
	_, err = p.Exec(context.Background(), "vm1", hypervisor.ExecRequest{Path: "print", Args: []string{"hello", "from", "Exec"}})
	require.NoError(t, err)

	sink.waitFor(t, `plugin=chatty line="hello from Exec"`, 5*time.Second)
	sink.waitFor(t, `line="to stderr: hello from Exec"`, 5*time.Second)
	sink.waitFor(t, `dropped="5904 more bytes of the line"`, 5*time.Second)
	sink.waitFor(t, `line="straight to file descriptor 1"`, 5*time.Second)
	lines := strings.Split(sink.String(), "\n")
	for _, want := range []string{`line="hello from Exec"`, `line="to stderr: hello from Exec"`, "dropped=", "file descriptor 1"} {
		i := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, want) })
		require.GreaterOrEqual(t, i, 0, want)
		assert.Contains(t, lines[i], "[WARN]  sandbox.chatty: the plugin wrote a line to its std", lines[i])
	}
	assert.Contains(t, sink.String(), "which sandbox does not read")
	assert.True(t, strings.Contains(sink.String(), " line="+strings.Repeat("x", 4096)+" dropped="),
		"a long line is logged cut at its bound, 4096 bytes")
}

func TestPluginEnvironmentIsMinimal(t *testing.T) {
	t.Setenv("SANDBOX_HOST_TEST_SECRET", "leak")
	t.Setenv("SANDBOX_HOST_TEST_PASSED", "yes")
	cfg := scriptedPlugin(t)
	cfg.Env = append(cfg.Env, "SANDBOX_HOST_TEST_PASSED")
	h := newHost(t, map[string]config.Plugin{"s": cfg}, "")
	p := plug(t, h, "s")
	_, err := p.Status(context.Background(), "vm1")
	require.NoError(t, err)
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/environ")
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("no /proc on this host")
	}
	require.NoError(t, err)
	env := strings.Split(string(environ), "\x00")
	assert.Contains(t, env, "SANDBOX_HOST_TEST_PASSED=yes")
	assert.NotContains(t, string(environ), "SANDBOX_HOST_TEST_SECRET")
}
