package main_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

var sandboxBin, fakeBin string

// The package's tests run the CLI and its plugins as processes and mostly
// wait for them, so four run at once rather than one per core.
func TestMain(m *testing.M) {
	flag.Parse()
	plugintest.WaitingParallel(4)
	var programs plugintest.Cache
	code := func() int {
		defer programs.Close()
		var err error
		if sandboxBin, err = programs.Path("github.com/sandboxhq/sandbox/cmd/sandbox"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if fakeBin, err = programs.Path("github.com/sandboxhq/sandbox/plugins/fake/cmd/sandbox-plugin-fake"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// sandbox runs the CLI with config text written to a fresh config.toml.
func sandbox(t *testing.T, config string, args ...string) result {
	t.Helper()
	return sandboxIn(t, t.TempDir(), config, args...)
}

// sandboxIn runs the CLI in dir, whose config.toml and state directory
// (state_dir = "state") carry over from earlier runs in the same dir.
func sandboxIn(t *testing.T, dir, config string, args ...string) result {
	t.Helper()
	path := filepath.Join(dir, "config.toml")
	require.NoError(t, os.WriteFile(path, []byte("state_dir = \"state\"\n"+config), 0o644))
	r := sandboxRaw(t, dir, args...)
	require.GreaterOrEqual(t, r.code, 0, r.stderr)
	return r
}

// sandboxRaw runs the CLI on the config.toml already in dir. It may run on
// any goroutine: a failure to run at all is code -1.
func sandboxRaw(t *testing.T, dir string, args ...string) result {
	cmd := exec.Command(sandboxBin, append([]string{"--config", filepath.Join(dir, "config.toml")}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return result{code: -1, stderr: err.Error()}
	}
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

func fakeConfig(args string) string {
	return fmt.Sprintf(`[plugins.fake]
path = %q
args = [%s]

[plugins.fake.config.vms.win10-64-defender]
state = "running"
snapshots = ["clean"]

[plugins.fake.config.vms.linux]
snapshots = ["base"]
`, fakeBin, args)
}

func TestPluginsShowsProtocol2AndCapabilities(t *testing.T) {
	t.Parallel()
	r := sandbox(t, fakeConfig(""), "--json", "plugins")
	require.Equal(t, 0, r.code, r.stderr)
	var out struct {
		Plugins []struct {
			Plugin   string
			Protocol int
			Pid      int
			Info     struct{ Capabilities []string }
		}
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	require.Len(t, out.Plugins, 1)
	assert.Equal(t, "fake", out.Plugins[0].Plugin)
	assert.Equal(t, 2, out.Plugins[0].Protocol)
	assert.Contains(t, out.Plugins[0].Info.Capabilities, "unlock")
	assert.Contains(t, out.Plugins[0].Info.Capabilities, "status.lock")
	assert.Len(t, out.Plugins[0].Info.Capabilities, 12)
}

func TestPluginsShowsProtocol1ForAV1OnlyFake(t *testing.T) {
	t.Parallel()
	r := sandbox(t, fakeConfig(`"--max-protocol=1"`), "--json", "plugins")
	require.Equal(t, 0, r.code, r.stderr)
	var out struct {
		Plugins []struct {
			Protocol int
			Info     struct{ Capabilities []string }
		}
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	assert.Equal(t, 1, out.Plugins[0].Protocol)
	assert.Equal(t, []string{"snapshot.restore", "stop.poweroff"}, out.Plugins[0].Info.Capabilities)
}

func TestPluginsTable(t *testing.T) {
	t.Parallel()
	r := sandbox(t, fakeConfig(""), "plugins")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^PLUGIN\s+PROTOCOL\s+DRIVER`, r.stdout)
	assert.Regexp(t, `(?m)^fake\s+2\s+fake\s`, r.stdout)
}

func TestVMListAndStatus(t *testing.T) {
	t.Parallel()
	r := sandbox(t, fakeConfig(""), "vm", "list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^fake\s+linux\s+off`, r.stdout)
	assert.Regexp(t, `(?m)^fake\s+win10-64-defender\s+running`, r.stdout)

	r = sandbox(t, fakeConfig(""), "--json", "vm", "status", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	var st map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Equal(t, "fake", st["plugin"])
	assert.Equal(t, "running", st["power"])
	assert.Equal(t, "locked", st["lock"])
	assert.Equal(t, "clean", st["current_snapshot"])

	r = sandbox(t, fakeConfig(""), "vm", "status", "linux")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Session lock:     unlocked")
}

func TestVMListOfAV1PluginUsesTheConfiguredVMs(t *testing.T) {
	t.Parallel()
	conf := fakeConfig(`"--max-protocol=1"`) + "\n[vms.linux]\nplugin = \"fake\"\n"
	r := sandbox(t, conf, "vm", "list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "from config; the plugin cannot list")
	r = sandbox(t, conf, "vm", "status", "linux")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Session lock:     unknown", "protocol 1 does not report locks")
}

func TestExitStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		config string
		args   []string
		code   int
		stderr string
	}{
		{"unknown VM fails", fakeConfig(""), []string{"vm", "status", "nope"}, 1, "not found"},
		{"missing argument is usage", fakeConfig(""), []string{"vm", "status"}, 2, "takes 1 argument"},
		{"unknown command is usage", fakeConfig(""), []string{"frobnicate"}, 2, "unknown command"},
		{"unknown flag is usage", fakeConfig(""), []string{"--frob", "plugins"}, 2, "unknown flag"},
		{"bad log level is usage", fakeConfig(""), []string{"--log-level", "loud", "plugins"}, 2, "--log-level"},
		{"bad config names file, line and key", "[plugins.fake]\npath = \"x\"\ncheksum = 1\n",
			[]string{"plugins"}, 1, "config.toml:4: plugins.fake.cheksum: unknown key"},
		{"plugin config error reaches the operator", fakeConfig("") + "[plugins.fake.config.vms.linux.faults]\nacpi_ignord = true\n",
			[]string{"plugins"}, 1, "plugins.fake.config.vms.linux.faults.acpi_ignord: unknown key"},
		{"missing plugin binary", "[plugins.fake]\npath = \"bin/sandbox-plugin-fake\"\n", []string{"vm", "list"}, 1, "make build"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := sandbox(t, tc.config, tc.args...)
			assert.Equal(t, tc.code, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
			assert.Contains(t, r.stdout+r.stderr, tc.stderr)
		})
	}
}

func TestMissingConfigFile(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(sandboxBin, "--config", filepath.Join(t.TempDir(), "absent.toml"), "plugins")
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Equal(t, 1, cmd.ProcessState.ExitCode())
	assert.True(t, strings.Contains(string(out), "absent.toml does not exist"), string(out))
}

func TestVMListWarnsAboutAConfiguredVMNoPluginHas(t *testing.T) {
	t.Parallel()
	conf := fakeConfig("") + "\n[vms.win10-64-defendr]\nstop_ladder = [\"poweroff\"]\n"
	r := sandbox(t, conf, "vm", "list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `config.toml:\d+: vms.win10-64-defendr: names a VM no plugin lists`, r.stderr)
	r = sandbox(t, fakeConfig(""), "vm", "list")
	assert.Empty(t, r.stderr, "no warning when every configured VM exists")
}
