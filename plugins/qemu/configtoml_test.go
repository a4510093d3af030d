package qemu_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/plugins/qemu"
	"github.com/sandboxhq/sandbox/sdk"
)

// The repository's config.toml carries a commented-out block for this
// driver, its test guest and a scan profile. These tests keep it honest:
// uncommented, it holds every key of the driver's table at its default,
// and pointed at a copy of the test guest it runs the CLI, `sandbox run`
// included.

const repoConfig = "../../config.toml"

// qemuBlock returns the block of config.toml uncommented as its
// introduction says (one "#" and the space after it off each line), and
// the line it begins on.
func qemuBlock(t *testing.T) (string, int) {
	t.Helper()
	data, err := os.ReadFile(repoConfig)
	require.NoError(t, err)
	lines := strings.Split(string(data), "\n")
	start := -1
	for i, l := range lines {
		if l == "# [plugins.qemu]" {
			start = i
			break
		}
	}
	require.NotEqual(t, -1, start, `config.toml has no line "# [plugins.qemu]"`)
	var out []string
	for _, l := range lines[start:] {
		if !strings.HasPrefix(l, "#") {
			break
		}
		out = append(out, strings.TrimPrefix(strings.TrimPrefix(l, "#"), " "))
	}
	return strings.Join(out, "\n") + "\n", start + 1
}

// withValues replaces the values of "table.key"s of a TOML text, each
// assigned there exactly once.
func withValues(t *testing.T, text string, values map[string]string) string {
	t.Helper()
	seen := map[string]int{}
	table := ""
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "[") {
			table = strings.Trim(trimmed, "[]")
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
		require.Equal(t, 1, seen[k], "the block assigns %s once", k)
	}
	return strings.Join(lines, "\n")
}

func TestConfigTOMLBlockShowsEveryKeyAtItsDefault(t *testing.T) {
	t.Parallel()
	block, first := qemuBlock(t)
	padded := strings.Repeat("\n", first-1) + block
	var c qemu.Config
	require.NoError(t, sdk.ConfigFromTOML("qemu", repoConfig, []byte(padded)).Decode(&c),
		"the uncommented block is valid TOML with only keys the driver knows")
	want := qemu.Defaults()
	want.StateDir = "bin/qemu-vms"
	vms := c.VMs
	c.VMs = nil
	assert.Equal(t, want, c, "the uncommented block sets every key of the driver's table to its default")
	require.Contains(t, vms, "qemu-scan")
	vm := vms["qemu-scan"]
	assert.Equal(t, "ready", vm.Snapshot)
	assert.Equal(t, 256, vm.Memory)
	assert.Equal(t, "exit", vm.OnPoweroff)
	assert.NotNil(t, vm.GuestAgent)
	assert.NotNil(t, vm.Args, "args is shown")
}

// cli runs bin/sandbox with the configuration file and returns stdout.
func cli(t *testing.T, file string, args ...string) string {
	t.Helper()
	cmd := exec.Command(programs.path(t, cliPkg), append([]string{"--config", file, "--json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "sandbox %s: %s", strings.Join(args, " "), stderr.String())
	return stdout.String()
}

// eicar writes the EICAR anti-virus test file. It is put together here so
// that no file of the repository is itself the test file.
func eicar(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "eicar.com")
	s := `X5O!P%@AP[4\PZX54(P^)7CC)7}$` + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*"
	require.NoError(t, os.WriteFile(p, []byte(s), 0o644))
	return p
}

// The block, uncommented and pointed at a copy of the test guest, is all
// the CLI needs: `sandbox plugins` launches the driver, `sandbox run`
// finds the EICAR test file malicious and an ordinary file clean, and
// leaves the VM off, unlocked and restored.
func TestConfigTOMLBlockRunsSandboxRun(t *testing.T) {
	t.Parallel()
	r := newRig(t) // for the guest and a short state directory
	g := guestDir(t)
	disk := filepath.Join(r.dir, "qemu-scan.qcow2")
	copyFile(t, filepath.Join(g, "disk.qcow2"), disk)
	block, _ := qemuBlock(t)
	text := withValues(t, block, map[string]string{
		"plugins.qemu.path":                        programs.path(t, pluginPkg),
		"plugins.qemu.config.state_dir":            filepath.Join(r.dir, "s"),
		"plugins.qemu.config.vms.qemu-scan.disk":   disk,
		"plugins.qemu.config.vms.qemu-scan.kernel": filepath.Join(g, "vmlinuz"),
		"plugins.qemu.config.vms.qemu-scan.initrd": filepath.Join(g, "initramfs.cpio.gz"),
	})
	r.vms = []vmSpec{{name: "qemu-scan"}}
	file := filepath.Join(r.dir, "config.toml")
	require.NoError(t, os.WriteFile(file, []byte("state_dir = \"state\"\n\n"+text), 0o644))

	var plugins struct {
		Plugins []struct {
			Plugin, Error string
			Info          struct {
				Name, Hypervisor string
				Capabilities     []string
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(cli(t, file, "plugins")), &plugins))
	require.Len(t, plugins.Plugins, 1)
	p := plugins.Plugins[0]
	assert.Empty(t, p.Error)
	assert.Equal(t, "qemu", p.Info.Name)
	assert.Contains(t, p.Info.Hypervisor, "QEMU emulator version")
	assert.Len(t, p.Info.Capabilities, 12, "every capability of the contract")

	samples := t.TempDir()
	clean := filepath.Join(samples, "notes.txt")
	require.NoError(t, os.WriteFile(clean, []byte("an ordinary file\n"), 0o644))
	bad := eicar(t, samples)
	out := filepath.Join(r.dir, "results")
	begun := time.Now()
	var run struct {
		Reports []engine.Report `json:"reports"`
	}
	require.NoError(t, json.Unmarshal([]byte(cli(t, file, "run", "--out", out, clean, bad)), &run))
	t.Logf("sandbox run of two samples on one QEMU VM: %s", time.Since(begun))
	require.Len(t, run.Reports, 2)
	for i, want := range []engine.Verdict{engine.VerdictClean, engine.VerdictMalicious} {
		rep := run.Reports[i]
		assert.Equal(t, want, rep.Verdict, rep.Sample.Name)
		require.Len(t, rep.Results, 1)
		res := rep.Results[0]
		assert.Equal(t, engine.StepDone, res.State, res.Error)
		assert.Equal(t, "qemu-scan", res.VM)
		require.Len(t, res.Artifacts, 1)
		log, err := os.ReadFile(filepath.Join(out, rep.Sample.SHA256, res.Artifacts[0].Path))
		require.NoError(t, err)
		if want == engine.VerdictMalicious {
			assert.Contains(t, string(log), "infected EICAR-Test-File", "the scanner's result file came back")
		} else {
			assert.Contains(t, string(log), "clean /tmp/notes.txt")
		}
	}

	var st struct {
		Power, Lock     string
		CurrentSnapshot string `json:"current_snapshot"`
	}
	require.NoError(t, json.Unmarshal([]byte(cli(t, file, "vm", "status", "qemu-scan")), &st))
	assert.Equal(t, "saved", st.Power, "off and restored to the running snapshot")
	assert.Equal(t, "unlocked", st.Lock)
	assert.Equal(t, "ready", st.CurrentSnapshot)
}
