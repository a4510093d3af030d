package vboxmanage_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/plugins/vboxmanage"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim/simtest"
	"github.com/sandboxhq/sandbox/sdk"
)

// The repository's config.toml carries a commented-out block for this
// driver. These tests keep it honest: uncommented, it holds every key of
// the driver's table at its default, and pointed at a simulated
// VirtualBox it runs `sandbox plugins` and `sandbox vm list` through the
// CLI.

// repoConfig is the repository's config.toml, from this package's
// directory.
const repoConfig = "../../config.toml"

// configBlock returns the driver's block of config.toml uncommented the
// way its introduction tells a user to: one "#" and the space after it
// removed from each line. The block is the run of comment lines that
// begins with "# [plugins.vbox]", found on line first (1-based).
func configBlock(t *testing.T) (block string, first int) {
	t.Helper()
	data, err := os.ReadFile(repoConfig)
	require.NoError(t, err)
	lines := strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n")
	start := -1
	for i, l := range lines {
		if l == "# [plugins.vbox]" {
			start = i
			break
		}
	}
	require.NotEqual(t, -1, start, "config.toml has no line \"# [plugins.vbox]\"")
	require.True(t, start > 0 && lines[start-1] == "", "a blank line separates the block from its introduction")
	var out []string
	for _, l := range lines[start:] {
		if !strings.HasPrefix(l, "#") {
			break
		}
		out = append(out, strings.TrimPrefix(strings.TrimPrefix(l, "#"), " "))
	}
	return strings.Join(out, "\n") + "\n", start + 1
}

// tomlKeys lists the "table.key" pairs text assigns, and the tables it
// declares, after removing every level of commenting: what the block
// documents, live or as an example.
func tomlKeys(text string) (keys, tables map[string]bool) {
	keys, tables = map[string]bool{}, map[string]bool{}
	table := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimLeft(l, "# ")
		switch {
		case strings.HasPrefix(l, "["):
			end := strings.Index(l, "]")
			if end < 0 {
				continue
			}
			table = strings.TrimSpace(l[1:end])
			tables[table] = true
		case strings.Contains(l, "="):
			key := strings.TrimSpace(l[:strings.Index(l, "=")])
			if key != "" && !strings.ContainsAny(key, " \t\"") {
				keys[table+"."+key] = true
			}
		}
	}
	return keys, tables
}

// configLeaves lists the dotted keys of a TOML-tagged struct, below prefix.
func configLeaves(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Struct:
			out = append(out, configLeaves(f.Type, prefix+tag+".")...)
		case reflect.Map:
			// Per-VM tables: checked by their table, not by leaf.
		default:
			out = append(out, prefix+tag)
		}
	}
	return out
}

// setKeys replaces the values of the given "table.key"s in text, each of
// which must be assigned there exactly once.
func setKeys(t *testing.T, text string, values map[string]string) string {
	t.Helper()
	seen := map[string]int{}
	table := ""
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "[") {
			table = strings.TrimSpace(trimmed[1:strings.Index(trimmed, "]")])
			continue
		}
		key, _, ok := strings.Cut(trimmed, "=")
		if !ok || strings.HasPrefix(trimmed, "#") {
			continue
		}
		full := table + "." + strings.TrimSpace(key)
		if v, ok := values[full]; ok {
			lines[i] = fmt.Sprintf("%s = %q", strings.TrimSpace(key), v)
			seen[full]++
		}
	}
	for k := range values {
		require.Equal(t, 1, seen[k], "config.toml's block assigns %s once", k)
	}
	return strings.Join(lines, "\n")
}

func TestConfigTOMLBlockShowsEveryKeyAtItsDefault(t *testing.T) {
	t.Parallel()
	block, first := configBlock(t)
	// Padded to its place in config.toml, so that a mistake is reported
	// on its own line.
	padded := strings.Repeat("\n", first-1) + block
	var c vboxmanage.Config
	require.NoError(t, sdk.ConfigFromTOML("vbox", repoConfig, []byte(padded)).Decode(&c),
		"the uncommented block is valid TOML with only keys the driver knows")
	assert.Equal(t, vboxmanage.Defaults(), c, "the uncommented block sets every key to its default")

	keys, tables := tomlKeys(block)
	for _, k := range configLeaves(reflect.TypeFor[vboxmanage.Config](), "plugins.vbox.config.") {
		assert.True(t, keys[k], "config.toml's block documents %s", k)
	}
	for _, k := range []string{"guest.password_file", "guest.password_env"} {
		assert.True(t, keys["plugins.vbox.config."+k], "config.toml's block documents %s", k)
	}
	perVM := false
	for table := range tables {
		perVM = perVM || strings.HasPrefix(table, "plugins.vbox.config.vms.")
	}
	assert.True(t, perVM, "config.toml's block shows a per-VM table")

	env := ""
	for _, l := range strings.Split(block, "\n") {
		if strings.HasPrefix(l, "env = ") {
			env = l
		}
	}
	for _, v := range []string{"VBOX_USER_HOME", "VBOX_MSI_INSTALL_PATH", "VBOX_INSTALL_PATH", "SANDBOX_VBOX_GUEST_PASSWORD"} {
		assert.Contains(t, env, `"`+v+`"`, "the plugin's env passes %s", v)
	}
	assert.Contains(t, block, `password_env = "SANDBOX_VBOX_GUEST_PASSWORD"`, "the password variable env passes is the one shown")
}

// The block, uncommented and pointed at a simulated VirtualBox, is all the
// CLI needs to launch the driver and list its VMs.
func TestConfigTOMLBlockRunsTheCLI(t *testing.T) {
	t.Parallel()
	sim := simtest.New(t, vboxsim.Config{Version: profiles[2].version, Host: profiles[2].host},
		guestVM(vmName, vmUUID), vboxsim.NewVM("ubuntu-22-clamav", "4f8a3c1e-2b7d-4c0a-9e51-7d2c8b9a6f10"))
	block, _ := configBlock(t)
	text := setKeys(t, block, map[string]string{
		"plugins.vbox.path":             programs.path(t, pluginPkg),
		"plugins.vbox.config.path":      sim.Bin,
		"plugins.vbox.config.user_home": sim.Home,
	})
	dir := t.TempDir()
	file := filepath.Join(dir, "config.toml")
	require.NoError(t, os.WriteFile(file, []byte("state_dir = \"state\"\n\n"+text), 0o600))
	cli := programs.path(t, cliPkg)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(cli, append([]string{"--config", file, "--json"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Run(), "sandbox %s: %s", strings.Join(args, " "), stderr.String())
		return stdout.String()
	}

	var plugins struct {
		Plugins []struct {
			Plugin   string
			Protocol int
			Error    string
			Info     struct {
				Name         string
				Hypervisor   string
				Capabilities []string
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(run("plugins")), &plugins))
	require.Len(t, plugins.Plugins, 1)
	p := plugins.Plugins[0]
	assert.Empty(t, p.Error)
	assert.Equal(t, "vbox", p.Plugin)
	assert.Equal(t, 2, p.Protocol)
	assert.Equal(t, "vboxmanage", p.Info.Name)
	assert.Equal(t, "VirtualBox "+profiles[2].version, p.Info.Hypervisor)
	assert.Equal(t, []string{"cleanup", "list", "snapshot.restore", "status.lock", "stop.acpi", "stop.emergency",
		"stop.poweroff", "unlock"}, p.Info.Capabilities, "no guest operations without guest credentials")

	var list struct {
		VMs []struct {
			Plugin, Name, ID string
		}
		Errors []string
	}
	require.NoError(t, json.Unmarshal([]byte(run("vm", "list")), &list))
	assert.Empty(t, list.Errors)
	require.Len(t, list.VMs, 2)
	assert.Equal(t, "vbox", list.VMs[0].Plugin)
	assert.Equal(t, vmName, list.VMs[0].Name)
	assert.Equal(t, vmUUID, list.VMs[0].ID)
	assert.Equal(t, "ubuntu-22-clamav", list.VMs[1].Name)
}

// docsWorld returns the simulated world docs/vboxmanage.md shows: its
// first JSON block.
func docsWorld(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../../docs/vboxmanage.md")
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(data), "\n```json\n")
	require.True(t, ok, "docs/vboxmanage.md has a JSON block")
	world, _, ok := strings.Cut(rest, "\n```\n")
	require.True(t, ok)
	return []byte(world)
}

// The recipe of docs/vboxmanage.md for running the driver against the
// simulator works as it says: its world, with config.toml's block pointed
// at it, lets `sandbox vm cleanup` power the VM off, wait out its
// lingering session and restore it.
func TestDocsSimulatorRecipeRuns(t *testing.T) {
	t.Parallel()
	home := filepath.Join(t.TempDir(), "home")
	require.NoError(t, os.Mkdir(home, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(home, "state.json"), docsWorld(t), 0o644))
	w, err := vboxsim.Load(home)
	require.NoError(t, err, "the documented world loads")
	require.Len(t, w.VMs, 1)

	block, _ := configBlock(t)
	text := setKeys(t, block, map[string]string{
		"plugins.vbox.path":             programs.path(t, pluginPkg),
		"plugins.vbox.config.path":      simtest.Build(t),
		"plugins.vbox.config.user_home": home,
	})
	file := filepath.Join(t.TempDir(), "config.toml")
	require.NoError(t, os.WriteFile(file, []byte("state_dir = \"state\"\n\n"+text), 0o600))
	cmd := exec.Command(programs.path(t, cliPkg), "--config", file, "--json", "vm", "cleanup", w.VMs[0].Name)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), stderr.String())
	var rep struct {
		Path  string
		Steps []struct{ Name, Outcome string }
		Final struct {
			Power, Lock     string
			CurrentSnapshot string `json:"current_snapshot"`
		}
	}
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep), stdout.String())
	assert.Equal(t, "native", rep.Path)
	var steps []string
	for _, s := range rep.Steps {
		steps = append(steps, s.Name+": "+s.Outcome)
	}
	assert.Equal(t, []string{"driver: poweroff: done", "driver: wait-off: done", "driver: wait-unlock: done",
		"driver: restore current: done", "native cleanup: done", "verify: ok"}, steps)
	assert.Equal(t, "off", rep.Final.Power)
	assert.Equal(t, "unlocked", rep.Final.Lock)
	assert.Equal(t, "clean", rep.Final.CurrentSnapshot)
}

// A guest password file that anyone may read, or that holds no password,
// is a configuration mistake, not something to find out at the first
// guest command.
func TestAPasswordFileOthersCanReadOrThatIsEmptyIsRefused(t *testing.T) {
	dir := t.TempDir()
	conf := "[plugins.vbox.config.guest]\nusername = \"analyst\"\npassword_file = \"pw\"\n"
	file := filepath.Join(dir, "config.toml")
	pw := filepath.Join(dir, "pw")

	require.NoError(t, os.WriteFile(pw, []byte("\n"), 0o600))
	_, err := newFromTOML(file, conf)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "config.toml:3: plugins.vbox.config.guest.password_file:")
	assert.Contains(t, err.Error(), "empty")

	if runtime.GOOS != "windows" {
		require.NoError(t, os.WriteFile(pw, []byte("s3cret\n"), 0o644))
		require.NoError(t, os.Chmod(pw, 0o644))
		_, err = newFromTOML(file, conf)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "by other users")
		assert.Contains(t, err.Error(), "chmod 600")
	}

	require.NoError(t, os.Chmod(pw, 0o600))
	_, err = newFromTOML(file, conf)
	assert.NoError(t, err)
}
