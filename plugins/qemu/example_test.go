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

	"github.com/sandboxhq/sandbox/plugins/qemu"
	"github.com/sandboxhq/sandbox/sdk"
)

// docs/examples/qemu.toml is the configuration `make demo-qemu` runs: two
// VMs of the test guest and a two-engine scan, ClamAV and YARA. These
// tests keep it honest: it shows every key of the driver's table at its
// default, and, pointed at copies of the test guest, the CLI runs it as
// it is and reaches the verdicts the scanners should.

const exampleConfig = "../../docs/examples/qemu.toml"

// withValues replaces the values of "table.key"s of a TOML text, each
// assigned there exactly once (a top-level key is ".key").
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
		require.Equal(t, 1, seen[k], "the file assigns %s once", k)
	}
	return strings.Join(lines, "\n")
}

// cli runs bin/sandbox with the configuration file and returns stdout.
func cli(t testing.TB, file string, args ...string) string {
	t.Helper()
	cmd := exec.Command(programs.path(t, cliPkg), append([]string{"--config", file, "--json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "sandbox %s: %s\nstdout:\n%s", strings.Join(args, " "), stderr.String(), tail(stdout.String(), 100))
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

// runOutput is what `sandbox --json run` prints, as far as these tests
// read it (the report schema sandbox.report/v1, docs/engine.md).
type runOutput struct {
	Reports []struct {
		Sample struct {
			Name   string `json:"name"`
			SHA256 string `json:"sha256"`
		} `json:"sample"`
		Verdict string `json:"verdict"`
		Results []struct {
			Profile     string `json:"profile"`
			VM          string `json:"vm"`
			State       string `json:"state"`
			Verdict     string `json:"verdict"`
			Rule        string `json:"rule"`
			Error       string `json:"error"`
			ExitCode    *int   `json:"exit_code"`
			Stdout      string `json:"stdout"`
			Stderr      string `json:"stderr"`
			Transitions []struct {
				Step string    `json:"step"`
				At   time.Time `json:"at"`
			} `json:"transitions"`
		} `json:"results"`
	} `json:"reports"`
}

func sandboxRun(t testing.TB, file string, args ...string) runOutput {
	t.Helper()
	var out runOutput
	require.NoError(t, json.Unmarshal([]byte(cli(t, file, append([]string{"run"}, args...)...)), &out))
	return out
}

func TestQEMUExampleShowsEveryKeyAtItsDefault(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(exampleConfig)
	require.NoError(t, err)
	var c qemu.Config
	require.NoError(t, sdk.ConfigFromTOML("qemu", exampleConfig, data).Decode(&c),
		"the example is valid TOML with only keys the driver knows")
	want := qemu.Defaults()
	want.StateDir = "../../bin/qemu-vms"
	vms := c.VMs
	c.VMs = nil
	assert.Equal(t, want, c, "the example sets every key of the driver's table to its default")
	require.Len(t, vms, 2)
	vm := vms["qemu-1"]
	assert.Equal(t, "ready", vm.Snapshot)
	assert.Equal(t, 256, vm.Memory)
	assert.Equal(t, "exit", vm.OnPoweroff)
	assert.NotNil(t, vm.GuestAgent)
	assert.NotNil(t, vm.Args, "args is shown")
}

// exampleRig is the example configuration pointed at two fresh copies of
// the test guest's disk, the built plugin and a short state directory.
func exampleRig(t *testing.T) (file, text string) {
	t.Helper()
	r := newRig(t) // for the guest and a short state directory
	g := guestDir(t)
	data, err := os.ReadFile(exampleConfig)
	require.NoError(t, err)
	values := map[string]string{
		".state_dir":                    filepath.Join(r.dir, "state"),
		"plugins.qemu.path":             programs.path(t, pluginPkg),
		"plugins.qemu.config.state_dir": filepath.Join(r.dir, "s"),
		"engine.out_dir":                filepath.Join(r.dir, "results"),
	}
	for _, vm := range []string{"qemu-1", "qemu-2"} {
		disk := filepath.Join(r.dir, vm+".qcow2")
		copyFile(t, filepath.Join(g, "disk.qcow2"), disk)
		values["plugins.qemu.config.vms."+vm+".disk"] = disk
		values["plugins.qemu.config.vms."+vm+".kernel"] = filepath.Join(g, "vmlinuz")
		values["plugins.qemu.config.vms."+vm+".initrd"] = filepath.Join(g, "initramfs.cpio.gz")
		r.vms = append(r.vms, vmSpec{name: vm})
	}
	text = withValues(t, string(data), values)
	file = filepath.Join(r.dir, "qemu.toml")
	require.NoError(t, os.WriteFile(file, []byte(text), 0o644))
	return file, text
}

// The example, as it is, runs a two-engine scan through the CLI on both
// VMs at once: ClamAV finds the EICAR file and a zipped test file, YARA
// finds the EICAR file and the dropper its hand-written rule describes,
// from its output alone; an ordinary file is clean for both. Both VMs
// end saved at their snapshot, unlocked. And a sample a scanner cannot
// read is an error, not clean, under the example's verdict rules.
//
// Not parallel, like the other tests that scan: they load the CPU, and the
// conformance suite's timing checks run best beside no more than each
// other.
func TestQEMUExampleRunsATwoEngineScan(t *testing.T) {
	file, text := exampleRig(t)
	samples := t.TempDir()
	notes := filepath.Join(samples, "notes.txt")
	require.NoError(t, os.WriteFile(notes, []byte("an ordinary text file\n"), 0o644))
	zipped := filepath.Join(samples, "clam.zip")
	copyFile(t, filepath.Join(guestDir(t), "testfiles", "clam.zip"), zipped)

	begun := time.Now()
	out := sandboxRun(t, file, notes, eicar(t, samples), dropper(t, samples), zipped)
	t.Logf("sandbox run of 4 samples, 2 engines, on 2 QEMU VMs: %s", time.Since(begun))

	want := map[string]map[string]string{ // sample -> profile -> verdict
		"notes.txt":  {"clamav": "clean", "yara": "clean"},
		"eicar.com":  {"clamav": "malicious", "yara": "malicious"},
		"dropper.sh": {"clamav": "clean", "yara": "malicious"},
		"clam.zip":   {"clamav": "malicious", "yara": "clean"},
	}
	vms := map[string]int{}
	require.Len(t, out.Reports, len(want))
	for _, rep := range out.Reports {
		w := want[rep.Sample.Name]
		require.NotNil(t, w, rep.Sample.Name)
		require.Len(t, rep.Results, 2, rep.Sample.Name)
		for _, res := range rep.Results {
			assert.Equal(t, "done", res.State, "%s %s: %s", rep.Sample.Name, res.Profile, res.Error)
			assert.Equal(t, w[res.Profile], res.Verdict, "%s by %s: %s (%s%s)", rep.Sample.Name, res.Profile, res.Rule, res.Stdout, res.Stderr)
			vms[res.VM]++
			if res.Profile == "yara" {
				require.NotNil(t, res.ExitCode)
				assert.Equal(t, 0, *res.ExitCode, "YARA exits 0 whether a rule matched or not")
				if res.Verdict == "malicious" {
					assert.Equal(t, "output matches malicious_pattern", res.Rule)
				}
			}
		}
	}
	assert.Len(t, vms, 2, "both VMs scanned: %v", vms)

	for _, vm := range []string{"qemu-1", "qemu-2"} {
		var st struct {
			Power, Lock     string
			CurrentSnapshot string `json:"current_snapshot"`
		}
		require.NoError(t, json.Unmarshal([]byte(cli(t, file, "vm", "status", vm)), &st))
		assert.Equal(t, "saved", st.Power, "%s: off and restored to the running snapshot", vm)
		assert.Equal(t, "unlocked", st.Lock, vm)
		assert.Equal(t, "ready", st.CurrentSnapshot, vm)
	}

	t.Run("UnreadableSampleIsAnError", func(t *testing.T) { unreadableSample(t, file, text) })
}

// unreadableSample runs the example's profiles, each pointed at a file
// that is not there: clamscan's exit 2 and YARA's exit 1 are neither a
// clean nor a malicious answer, so the verdict is error.
func unreadableSample(t *testing.T, file, text string) {
	var extra strings.Builder
	for _, profile := range []string{"clamav", "yara"} {
		table := profileTables(t, text, profile)
		table = strings.ReplaceAll(table, "[profiles."+profile, "[profiles."+profile+"-unreadable")
		require.Contains(t, table, `"{sample}"`)
		extra.WriteString(strings.Replace(table, `"{sample}"`, `"{sample}.gone"`, 1))
	}
	require.NoError(t, os.WriteFile(file, []byte(text+"\n"+extra.String()), 0o644))
	notes := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(notes, []byte("an ordinary text file\n"), 0o644))

	out := sandboxRun(t, file, "--profile", "clamav-unreadable", "--profile", "yara-unreadable", notes)
	require.Len(t, out.Reports, 1)
	assert.Equal(t, "error", out.Reports[0].Verdict)
	for _, res := range out.Reports[0].Results {
		assert.Equal(t, "done", res.State, "%s: the scanner ran to completion: %s", res.Profile, res.Error)
		assert.Equal(t, "error", res.Verdict, "%s: %s", res.Profile, res.Rule)
		require.NotNil(t, res.ExitCode, res.Profile)
		wantExit := map[string]int{"clamav-unreadable": 2, "yara-unreadable": 1}[res.Profile]
		assert.Equal(t, wantExit, *res.ExitCode, "%s: %s%s", res.Profile, res.Stdout, res.Stderr)
		assert.Contains(t, res.Rule, "neither in malicious_exit_codes nor in clean_exit_codes")
	}
}

// profileTables is the text of [profiles.NAME] and its sub-tables in a
// TOML text, up to the next other table.
func profileTables(t testing.TB, text, name string) string {
	t.Helper()
	var b strings.Builder
	in := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "[") {
			h := strings.Trim(l, "[]")
			in = h == "profiles."+name || strings.HasPrefix(h, "profiles."+name+".")
		}
		if in {
			b.WriteString(l + "\n")
		}
	}
	require.NotEmpty(t, b.String(), "no [profiles.%s]", name)
	return b.String()
}
