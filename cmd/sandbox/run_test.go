package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
)

// runConfig is a fake world kept in the directory (so that later commands
// and other processes see it) with two VMs per profile family and the two
// profiles of the demo, on fast timings.
func runConfig(extra string) string {
	return fmt.Sprintf(`[plugins.fake]
path = %q
[plugins.fake.config]
state_dir = "world"
journal = "journal.jsonl"
[plugins.fake.config.timing]
start = "30ms"
acpi_shutdown = "50ms"
poweroff = "30ms"
restore = "30ms"
unlock_after_stop = "30ms"
guest_ready = "50ms"
[plugins.fake.config.vms.win-a]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.win-b]
snapshots = ["clean"]
[plugins.fake.config.vms.linux-a]
snapshots = ["base", "clean"]
[vms.linux-a]
snapshot = "clean"

[profiles.defender]
vms = ["win-a", "win-b"]
sample_path = 'C:\sandbox\{name}'
command = ['C:\Tools\scan.exe', "-o", 'C:\sandbox\scan.log', "{sample}"]
artifacts = ['C:\sandbox\scan.log']
[profiles.defender.verdict]
malicious_exit_codes = [1]

[profiles.clamav]
vms = ["linux-a"]
sample_path = "/tmp/{sha256}"
command = ["scan", "{sample}"]
ready_command = ["true"]
[profiles.clamav.verdict]
malicious_exit_codes = [1]
%s`, fakeBin, extra)
}

func eicarFile(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "eicar.com")
	require.NoError(t, os.WriteFile(p, []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$`+`EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`), 0o644))
	return p
}

func textFile(t testing.TB, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	return p
}

type runJSON struct {
	Reports  []engine.Report   `json:"reports"`
	Unusable map[string]string `json:"unusable_vms"`
	OutDir   string            `json:"out_dir"`
}

func TestRunGivesAVerdictPerSampleAndProfile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	samples := t.TempDir()
	clean := textFile(t, samples, "notes.txt", "an ordinary file\n")
	bad := eicarFile(t, samples)
	r := sandboxIn(t, dir, runConfig(""), "--json", "run", clean, bad, clean)
	require.Equal(t, 0, r.code, r.stderr)
	var out runJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	require.Len(t, out.Reports, 2, "the same file twice is analysed once")
	assert.Equal(t, filepath.Join(dir, "results"), out.OutDir, "out_dir defaults to results/ beside config.toml")
	for i, want := range []engine.Verdict{engine.VerdictClean, engine.VerdictMalicious} {
		rep := out.Reports[i]
		assert.Equal(t, want, rep.Verdict)
		require.Len(t, rep.Results, 2, "one result per profile")
		for _, res := range rep.Results {
			assert.Equal(t, engine.StepDone, res.State, res.Error)
			assert.Equal(t, want, res.Verdict, res.Profile)
		}
		onDisk, err := engine.ReadReport(filepath.Join(out.OutDir, rep.Sample.SHA256, engine.ReportFile))
		require.NoError(t, err)
		assert.Equal(t, want, onDisk.Verdict)
	}
	// Every VM ends off, unlocked and restored.
	for _, vm := range []string{"win-a", "win-b", "linux-a"} {
		st := sandboxIn(t, dir, runConfig(""), "--json", "vm", "status", vm)
		require.Equal(t, 0, st.code, st.stderr)
		var s map[string]any
		require.NoError(t, json.Unmarshal([]byte(st.stdout), &s))
		assert.Equal(t, "off", s["power"], vm)
		assert.Equal(t, "unlocked", s["lock"], vm)
		assert.Equal(t, "clean", s["current_snapshot"], vm)
	}
}

func TestRunPrintsOneLinePerSampleAndProfile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	samples := t.TempDir()
	r := sandboxIn(t, dir, runConfig(""), "run", "--profile", "clamav", "--out", filepath.Join(dir, "out"),
		textFile(t, samples, "notes.txt", "x"), eicarFile(t, samples))
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^SAMPLE\s+PROFILE\s+VM\s+VERDICT\s+STATE\s+TOOK$`, r.stdout)
	assert.Regexp(t, `(?m)^notes\.txt\s+clamav\s+linux-a\s+clean\s+done\s`, r.stdout)
	assert.Regexp(t, `(?m)^eicar\.com\s+clamav\s+linux-a\s+malicious\s+done\s`, r.stdout)
	assert.Contains(t, r.stdout, "2 sample(s): 1 clean, 1 malicious")
	assert.NotRegexp(t, `defender`, r.stdout, "--profile selects")
	_, err := os.Stat(filepath.Join(dir, "out"))
	assert.NoError(t, err, "--out is where reports go")
}

func TestRunMistakes(t *testing.T) {
	t.Parallel()
	samples := t.TempDir()
	s := textFile(t, samples, "s.txt", "x")
	for _, tc := range []struct {
		name   string
		config string
		args   []string
		code   int
		msg    string
	}{
		{"no sample", runConfig(""), []string{"run"}, 2, "needs at least one SAMPLE"},
		{"an unknown profile", runConfig(""), []string{"run", "--profile", "defendr", s}, 2,
			`--profile "defendr": no such profile`},
		{"a VM in no profile", runConfig(""), []string{"run", "--vm", "win-c", s}, 2, `--vm "win-c" is in none of the profiles`},
		{"a VM of a profile not selected", runConfig(""), []string{"run", "--profile", "clamav", "--vm", "win-a", s}, 2,
			`--vm "win-a" is in none of the profiles selected (clamav: linux-a)`},
		{"a negative start cap", runConfig(""), []string{"run", "--max-starting", "-1", s}, 2, "--max-starting"},
		{"a sample that does not exist", runConfig(""), []string{"run", filepath.Join(samples, "nope.exe")}, 1, "nope.exe"},
		{"no profile in the configuration", fakeConfig(""), []string{"run", s}, 1, "has no [profiles.NAME] table"},
		{"a profile VM nobody has", runConfig("[profiles.ghost]\nvms = [\"ghost\"]\nsample_path = \"/x\"\ncommand = [\"true\"]\n" +
			"[profiles.ghost.verdict]\nmalicious_exit_codes = [1]\n"), []string{"run", "--profile", "ghost", s}, 1,
			`profiles.ghost.vms: VM "ghost" is not a VM of plugin fake (it has: linux-a, win-a, win-b)`},
		{"a FIFO for a sample", runConfig(""), []string{"run", fifo(t, samples)}, 1, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := sandbox(t, tc.config, tc.args...)
			assert.Equal(t, tc.code, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
			assert.Contains(t, r.stderr, tc.msg)
		})
	}
}

// fifo makes a named pipe: opening it for reading would wait for a writer
// forever.
func fifo(t *testing.T, dir string) string {
	p := filepath.Join(dir, "pipe")
	require.NoError(t, syscall.Mkfifo(p, 0o600))
	return p
}

// A profile naming a VM no plugin has is refused before anything runs; the
// name never reaches the quarantine, where it would stay.
func TestAProfileVMNobodyHasIsNotQuarantined(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := runConfig("[profiles.ghost]\nvms = [\"ghost\"]\nsample_path = \"/x\"\ncommand = [\"true\"]\n" +
		"[profiles.ghost.verdict]\nmalicious_exit_codes = [1]\n")
	r := sandboxIn(t, dir, "state_dir = \"state\"\n"+conf, "run", "--profile", "ghost", textFile(t, dir, "s.txt", "x"))
	require.Equal(t, 1, r.code, r.stderr)
	list := sandboxRaw(t, dir, "--json", "vm", "list")
	assert.NotContains(t, list.stdout, "ghost", "no quarantine entry for a VM that does not exist")
	_, err := os.Stat(filepath.Join(dir, "state", "quarantine.json"))
	if err == nil {
		data, _ := os.ReadFile(filepath.Join(dir, "state", "quarantine.json"))
		assert.NotContains(t, string(data), "ghost")
	}
}

func TestRunExitsOneWhenATaskFailsAndSaysWhere(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := runConfig("[plugins.fake.config.vms.linux-a.faults]\ncopy_in_failures = 1\n")
	r := sandboxIn(t, dir, conf, "run", "--profile", "clamav", textFile(t, t.TempDir(), "s.txt", "x"))
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Regexp(t, `(?m)^s\.txt\s+clamav\s+linux-a\s+error\s+failed at copying`, r.stdout)
	assert.Contains(t, r.stdout, "s.txt with clamav on linux-a: failed at copying: copy-in")
}

// intervalsOf returns, per VM, when each task of the reports held it.
func intervalsOf(reports []engine.Report) map[string][][2]time.Time {
	out := map[string][][2]time.Time{}
	for _, rep := range reports {
		for _, res := range rep.Results {
			var from time.Time
			for _, tr := range res.Transitions {
				if tr.Step == engine.StepPreparing {
					from = tr.At
				}
				if tr.Step.Final() && !from.IsZero() {
					out[res.VM] = append(out[res.VM], [2]time.Time{from, tr.At})
				}
			}
		}
	}
	return out
}

func TestTwoRunsAtOnceShareTheVMsWithoutColliding(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	samples := t.TempDir()
	conf := runConfig("")
	var files [2][]string
	for p := range files {
		for i := range 3 {
			files[p] = append(files[p], textFile(t, samples, fmt.Sprintf("p%d-%d.txt", p, i), fmt.Sprintf("%d %d", p, i)))
		}
	}
	results := make(chan result, 2)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.toml"), []byte("state_dir = \"state\"\n"+conf), 0o644))
	for p := range files {
		go func() {
			args := append([]string{"--json", "run", "--profile", "defender", "--out", filepath.Join(dir, fmt.Sprintf("out%d", p))}, files[p]...)
			results <- sandboxRaw(t, dir, args...)
		}()
	}
	var reports []engine.Report
	for range files {
		r := <-results
		require.Equal(t, 0, r.code, r.stderr)
		var out runJSON
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
		reports = append(reports, out.Reports...)
	}
	require.Len(t, reports, 6)
	for vm, ivs := range intervalsOf(reports) {
		slices.SortFunc(ivs, func(a, b [2]time.Time) int { return a[0].Compare(b[0]) })
		for i := 1; i < len(ivs); i++ {
			assert.False(t, ivs[i][0].Before(ivs[i-1][1]), "%s held by two tasks at once: %v and %v", vm, ivs[i-1], ivs[i])
		}
	}
	for _, rep := range reports {
		assert.Equal(t, engine.VerdictClean, rep.Verdict)
	}
}
