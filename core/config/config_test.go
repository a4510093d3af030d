package config_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/configfile"
)

func TestTheShippedConfigLoads(t *testing.T) {
	cfg, err := config.Load(filepath.Join("..", "..", "config.toml"))
	require.NoError(t, err)
	assert.Equal(t, "bin/sandbox-plugin-fake", cfg.Plugins["fake"].Path)
	assert.Equal(t, "fake", cfg.VMs["win10-64-defender"].Plugin)
}

func TestBadConfigNamesFileLineAndKey(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		line       int
		key, msg   string
	}{
		{
			name: "unknown top-level table",
			text: "[plugins.fake]\npath = \"x\"\n\n[plugin.typo]\npath = \"y\"\n",
			line: 4, key: "plugin.typo", msg: "unknown key",
		},
		{
			name: "unknown plugin key",
			text: "[plugins.fake]\npath = \"x\"\nchecksum = \"abc\"\n",
			line: 3, key: "plugins.fake.checksum", msg: "unknown key",
		},
		{
			name: "wrong type",
			text: "[plugins.fake]\npath = \"x\"\nargs = \"--max-protocol=1\"\n",
			line: 3, key: "plugins.fake.args", msg: "incompatible types",
		},
		{
			name: "wrong duration",
			text: "[plugins.fake]\npath = \"x\"\nstart_timeout = \"soon\"\n",
			line: 3, key: "plugins.fake.start_timeout", msg: "soon",
		},
		{
			name: "missing required path",
			text: "[plugins.fake]\nargs = []\n",
			line: 1, key: "plugins.fake.path", msg: "missing",
		},
		{
			name: "bad checksum",
			text: "[plugins.fake]\npath = \"x\"\nsha256 = \"123\"\n",
			line: 3, key: "plugins.fake.sha256", msg: "64 hex digits",
		},
		{
			name: "vm names an unknown plugin",
			text: "[plugins.fake]\npath = \"x\"\n[vms.a]\nplugin = \"vbox\"\n",
			line: 4, key: "vms.a.plugin", msg: `no plugin named "vbox"`,
		},
		{
			name: "syntax error",
			text: "[plugins.fake]\npath = \"x\n",
			line: 2, msg: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("conf/sandbox.toml", []byte(tc.text))
			var ce *configfile.Error
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "conf/sandbox.toml", ce.File)
			assert.Equal(t, tc.line, ce.Line, "error: %v", err)
			if tc.key != "" {
				assert.Equal(t, tc.key, ce.Key)
			}
			assert.Contains(t, ce.Msg, tc.msg)
		})
	}
}

func TestPluginTablesAreLeftToThePlugin(t *testing.T) {
	cfg, err := config.Parse("c.toml", []byte("[plugins.fake]\npath = \"x\"\n[plugins.fake.config]\nanything = 1\n[plugins.fake.config.deep]\nmore = true\n"))
	require.NoError(t, err)
	assert.Contains(t, string(cfg.Data), "anything", "the text is kept for the plugin")
}

func TestAnEmptyFileIsValid(t *testing.T) {
	cfg, err := config.Parse("c.toml", nil)
	require.NoError(t, err)
	assert.Empty(t, cfg.Plugins)
	assert.NotNil(t, cfg.VMs)
}

func TestMissingFileSaysWhatToDo(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "nope.toml"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nope.toml does not exist")
	assert.Contains(t, err.Error(), "--config")
}

func TestUnreadableFileIsAnError(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "c.toml"), 0o755))
	_, err := config.Load(filepath.Join(dir, "c.toml"))
	assert.Error(t, err)
}

func TestAConfigWithoutLifecycleSettingsGetsTheDefaults(t *testing.T) {
	cfg, err := config.Parse("old.toml", []byte("[plugins.fake]\npath = \"x\"\n[vms.a]\nplugin = \"fake\"\n"))
	require.NoError(t, err)
	assert.Equal(t, config.DefaultLifecycle(), cfg.LifecycleOf("a"))
	assert.Equal(t, config.DefaultLifecycle(), cfg.LifecycleOf("not-configured"))
}

func TestLifecycleSettingsLayer(t *testing.T) {
	cfg, err := config.Parse("c.toml", []byte(`
[lifecycle]
acpi_timeout = "20s"
snapshot = "clean"

[vms.sandbox1]
stop_ladder = ["poweroff", "emergency"]
acpi_timeout = "5s"
restore_on_cleanup = false
`))
	require.NoError(t, err)
	s := cfg.LifecycleOf("sandbox1")
	assert.Equal(t, []string{config.StopPowerOff, config.StopEmergency}, s.StopLadder)
	assert.Equal(t, 5*time.Second, s.ACPITimeout, "the VM's own value wins")
	assert.Equal(t, "clean", s.Snapshot, "inherited from [lifecycle]")
	assert.False(t, s.RestoreOnCleanup)
	assert.Equal(t, config.DefaultLifecycle().PowerOffTimeout, s.PowerOffTimeout, "untouched keys keep the default")
	other := cfg.LifecycleOf("other")
	assert.Equal(t, 20*time.Second, other.ACPITimeout)
	assert.Equal(t, config.DefaultLifecycle().StopLadder, other.StopLadder)
}

func TestBadLifecycleSettingsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[lifecycle]\nstop_ladder = [\"acpi\", \"gentle\"]\n", `c.toml:2: lifecycle.stop_ladder: unknown stop method "gentle"`},
		{"[vms.a]\nstop_ladder = []\n", "c.toml:2: vms.a.stop_ladder: must name at least one stop method"},
		{"[vms.a]\npoweroff_timeout = \"0s\"\n", "c.toml:2: vms.a.poweroff_timeout: must be a positive duration"},
		{"[vms.a]\nstop_ladder = [\"acpi\", \"acpi\"]\n", `c.toml:2: vms.a.stop_ladder: "acpi" appears twice`},
		{"[vms.a]\nrestore_timout = \"1m\"\n", "c.toml:2: vms.a.restore_timout: unknown key"},
		// Polling every nanosecond would be a busy loop against the hypervisor.
		{"[lifecycle]\npoll_interval = \"1ns\"\n", "c.toml:2: lifecycle.poll_interval: must be at least 1ms"},
		{"[vms.a]\npoll_max_interval = \"500us\"\n", "c.toml:2: vms.a.poll_max_interval: must be at least 1ms"},
	} {
		_, err := config.Parse("c.toml", []byte(tc.text))
		require.Error(t, err, tc.text)
		assert.Contains(t, err.Error(), tc.want)
	}
}

func TestProfilesLoad(t *testing.T) {
	cfg, err := config.Parse("conf/sandbox.toml", []byte(`
[engine]
max_starting = 3

[profiles.clamav]
vms = ["ubuntu-a", "ubuntu-b"]
sample_path = "/tmp/{sha256}"
command = ["clamscan", "--no-summary", "{sample}"]
timeout = "2m"
artifacts = ["/var/log/clamav/scan.log"]
[profiles.clamav.verdict]
malicious_exit_codes = [1]
`))
	require.NoError(t, err)
	p := cfg.Profiles["clamav"]
	assert.Equal(t, []string{"ubuntu-a", "ubuntu-b"}, p.VMs)
	assert.Equal(t, 2*time.Minute, p.Timeout)
	assert.Equal(t, []string{"clamav"}, cfg.ProfileNames())
	assert.Equal(t, 3, cfg.Engine.MaxStarting)
	abs, err := filepath.Abs(filepath.Join("conf", "results"))
	require.NoError(t, err)
	assert.Equal(t, abs, cfg.Engine.OutDir, "out_dir is relative to the file, made absolute")
}

func TestBadProfilesNameFileLineAndKey(t *testing.T) {
	const base = "[profiles.p]\nvms = [\"a\"]\nsample_path = \"/tmp/{name}\"\ncommand = [\"scan\", \"{sample}\"]\n"
	for _, tc := range []struct {
		name, text string
		line       int
		key, msg   string
	}{
		{"a misspelt key", base + "timout = \"1m\"\n[profiles.p.verdict]\nmalicious_exit_codes = [1]\n",
			5, "profiles.p.timout", "unknown key"},
		{"no verdict rule", base, 1, "profiles.p.verdict", "malicious_exit_codes"},
		{"a bad pattern", base + "[profiles.p.verdict]\nmalicious_pattern = \"(\"\n",
			6, "profiles.p.verdict.malicious_pattern", "not a regular expression"},
		{"a bare number for a timeout", base + "timeout = 30\n[profiles.p.verdict]\nmalicious_exit_codes = [1]\n",
			5, "profiles.p.timeout", "needs a unit"},
		{"an unknown placeholder", "[profiles.p]\nvms = [\"a\"]\nsample_path = \"/tmp/{file}\"\ncommand = [\"x\"]\n" +
			"[profiles.p.verdict]\nmalicious_exit_codes = [1]\n", 3, "profiles.p.sample_path", "unknown placeholder {file}"},
		{"a negative max_starting", "[engine]\nmax_starting = -1\n", 2, "engine.max_starting", "negative"},
		{"a profile name becomes a directory", "[profiles.\"../x\"]\nvms = [\"a\"]\n", 1, `profiles."../x"`, "letters, digits"},
		{"no VMs", "[profiles.p]\nsample_path = \"/x\"\n", 1, "profiles.p.vms", "missing"},
		{"a VM twice", "[profiles.p]\nvms = [\"a\", \"a\"]\n", 2, "profiles.p.vms", `"a" is listed twice`},
		{"no sample path", "[profiles.p]\nvms = [\"a\"]\n", 1, "profiles.p.sample_path", "where the sample goes"},
		{"no command", "[profiles.p]\nvms = [\"a\"]\nsample_path = \"/x\"\n", 1, "profiles.p.command", "missing"},
		{"a placeholder misspelt", "[profiles.p]\nvms = [\"a\"]\nsample_path = \"/x\"\ncommand = [\"scan\", \"{smaple}\"]\n",
			4, "profiles.p.command", "unknown placeholder {smaple}"},
		{"{sample} in the sample path", "[profiles.p]\nvms = [\"a\"]\nsample_path = \"/tmp/{sample}\"\ncommand = [\"x\"]\n",
			3, "profiles.p.sample_path", "sample_path knows {name}, {sha256}"},
		{"an empty ready command", base + "ready_command = []\n", 5, "profiles.p.ready_command", "empty"},
		{"a zero timeout", base + "timeout = \"0s\"\n", 5, "profiles.p.timeout", "positive"},
		{"an artifact that is a directory", base + "artifacts = ['C:\\']\n", 5, "profiles.p.artifacts", "not a guest file"},
		{"an exit code both clean and malicious", base + "[profiles.p.verdict]\nmalicious_exit_codes = [0]\n",
			6, "profiles.p.verdict.malicious_exit_codes", "also in clean_exit_codes"},
		{"a short API token", "[server]\ntoken = \"abc\"\n", 2, "server.token", "too short"},
		{"a sample size past the bound", "[server]\nmax_sample_size = 2147483648\n", 2, "server.max_sample_size", "want 1 to 1073741824"},
		{"a negative sample size", "[server]\nmax_sample_size = -1\n", 2, "server.max_sample_size", "want 1 to"},
		{"a zero read timeout", "[server]\nread_timeout = \"0s\"\n", 2, "server.read_timeout", "positive"},
		{"a negative idle timeout", "[server]\nidle_timeout = \"-1s\"\n", 2, "server.idle_timeout", "positive"},
		{"a negative connection bound", "[server]\nmax_connections = -5\n", 2, "server.max_connections", "negative"},
		{"an artifact limit past the bound", "[queue]\nartifact_limit = 2147483648\n", 2, "queue.artifact_limit", "want 1 to"},
		{"a retention too short", "[queue]\nretention = \"10m\"\n", 2, "queue.retention", "at least 1h"},
		{"more uploads than connections", "[server]\nmax_connections = 4\nmax_uploads = 5\n", 3, "server.max_uploads", "cannot fit"},
		{"the former rescue_after", "[queue]\nrescue_after = \"15m\"\n", 2, "queue.rescue_after", "is now dead_after"},
		{"a dead_after too short to heartbeat in", "[queue]\ndead_after = \"1s\"\n", 2, "queue.dead_after", "at least 3s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse("conf/sandbox.toml", []byte(tc.text))
			var ce *configfile.Error
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.line, ce.Line, "error: %v", err)
			assert.Equal(t, tc.key, ce.Key)
			assert.Contains(t, ce.Msg, tc.msg)
		})
	}
}

// The default state directory is the user's own: without HOME it comes
// from the user database, never a fixed path every user shares.
func TestTheDefaultStateDirIsTheUsersOwnEvenWithoutHOME(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "")
	cfg, err := config.Parse("config.toml", nil)
	require.NoError(t, err)
	assert.NotEqual(t, filepath.Join(os.TempDir(), "sandbox-state"), cfg.StateDir, "a path every user shares")
	if !strings.HasPrefix(cfg.StateDir, os.TempDir()) {
		assert.True(t, strings.HasSuffix(cfg.StateDir, filepath.Join(".local", "state", "sandbox")), cfg.StateDir)
	}

	t.Setenv("XDG_STATE_HOME", "relative/dir")
	cfg, err = config.Parse("config.toml", nil)
	require.NoError(t, err)
	assert.True(t, filepath.IsAbs(cfg.StateDir), "a relative XDG_STATE_HOME is ignored, as its specification says: %s", cfg.StateDir)

	t.Setenv("XDG_STATE_HOME", "/var/lib/x")
	cfg, err = config.Parse("config.toml", nil)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join("/var/lib/x", "sandbox"), cfg.StateDir)
}

func TestProfileDefaults(t *testing.T) {
	cfg, err := config.Parse("c.toml", []byte("[profiles.clamav]\nvms = [\"vm1\"]\nsample_path = \"/tmp/{sha256}\"\n"+
		"command = [\"clamscan\", \"{sample}\"]\n[profiles.clamav.verdict]\nmalicious_exit_codes = [1]\n"))
	require.NoError(t, err)
	p := cfg.Profiles["clamav"]
	assert.Equal(t, config.DefaultTimeout, p.Timeout)
	assert.Equal(t, config.DefaultReadyTimeout, p.ReadyTimeout)
	assert.Equal(t, config.DefaultCopyTimeout, p.CopyTimeout)
	assert.Equal(t, []int{0}, p.Verdict.CleanExitCodes, "exit 0 is clean unless told otherwise")
}

// Configuration is resolved in one order: the defaults, the file, the
// environment, the flags; each layer wins over the one before.
func TestLayersResolveInOrder(t *testing.T) {
	env := map[string]string{config.TokenEnv: "from-the-environment-0123"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	text := "[server]\nlisten = \"127.0.0.1:9000\"\ntoken = \"from-the-file-0123456\"\n[queue]\nhost = \"a\"\n"
	cfg, err := config.ParseEnv("c.toml", []byte(text), lookup)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9000", cfg.Server.Listen, "the file over the default")
	assert.Equal(t, "from-the-environment-0123", cfg.Server.Token, "the environment over the file")
	assert.Equal(t, config.DefaultMaxSampleSize, int(cfg.Server.MaxSampleSize), "a default where nothing says otherwise")
	assert.Equal(t, config.DefaultReadTimeout, cfg.Server.ReadTimeout)
	assert.Equal(t, config.DefaultUploadTimeout, cfg.Server.UploadTimeout)
	assert.Equal(t, config.DefaultWriteTimeout, cfg.Server.WriteTimeout)
	assert.Equal(t, config.DefaultIdleTimeout, cfg.Server.IdleTimeout)
	assert.Equal(t, config.DefaultMaxConnections, cfg.Server.MaxConnections)
	assert.Equal(t, config.DefaultMaxUploads, cfg.Server.MaxUploads)
	assert.False(t, cfg.Server.PublicPage, "the page needs the token unless told otherwise")
	assert.Equal(t, int64(config.DefaultArtifactLimit), cfg.Queue.ArtifactLimit)
	assert.Equal(t, config.DefaultRetention, cfg.Queue.Retention)
	require.NoError(t, cfg.Apply(config.Flags{Listen: "127.0.0.1:9001", Host: "b", MaxStarting: 4}))
	assert.Equal(t, "127.0.0.1:9001", cfg.Server.Listen, "the flag over the file")
	assert.Equal(t, "b", cfg.Queue.Host)
	assert.Equal(t, 4, cfg.Engine.MaxStarting)

	// The environment is held to the file's rules.
	env[config.TokenEnv] = "x"
	_, err = config.ParseEnv("c.toml", nil, lookup)
	require.Error(t, err)
	assert.Contains(t, err.Error(), config.TokenEnv+": too short")

	// A flag's mistake names the flag.
	var fe *config.FlagError
	require.ErrorAs(t, cfg.Apply(config.Flags{Database: "mysql://x"}), &fe)
	assert.Equal(t, "--database", fe.Flag)
}

// Reading config.toml links no database, HTTP server or plugin host: the
// package imports none of the components that would bring them.
func TestConfigLinksNoComponent(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	require.NoError(t, err)
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"net/http", "database/sql", "riverqueue", "pgx", "sqlite", "prometheus", "grpc",
			"go-plugin", "sandbox/core/engine", "sandbox/core/lifecycle", "sandbox/core/host", "sandbox/core/queue", "sandbox/core/api"} {
			assert.NotContains(t, dep, banned, "core/config links %s", dep)
		}
	}
}

// Each [server] limit is taken from the file as written.
func TestServerLimitsFromTheFile(t *testing.T) {
	cfg, err := config.Parse("c.toml", []byte("[server]\nread_timeout = \"2s\"\nupload_timeout = \"3m\"\nwrite_timeout = \"4s\"\n"+
		"idle_timeout = \"5s\"\nmax_connections = 32\nmax_uploads = 2\nmax_sample_size = 1073741824\npublic_page = true\n"))
	require.NoError(t, err)
	s := cfg.Server
	assert.Equal(t, 2*time.Second, s.ReadTimeout)
	assert.Equal(t, 3*time.Minute, s.UploadTimeout)
	assert.Equal(t, 4*time.Second, s.WriteTimeout)
	assert.Equal(t, 5*time.Second, s.IdleTimeout)
	assert.Equal(t, 32, s.MaxConnections)
	assert.Equal(t, 2, s.MaxUploads)
	assert.Equal(t, int64(config.MaxSampleSizeLimit), s.MaxSampleSize, "the bound itself is accepted")
	assert.True(t, s.PublicPage)

	cfg, err = config.Parse("c.toml", []byte("[server]\nmax_connections = 3\n"))
	require.NoError(t, err)
	assert.Equal(t, 3, cfg.Server.MaxUploads, "uploads never outnumber connections")
}
