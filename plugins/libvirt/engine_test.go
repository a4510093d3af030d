package libvirt_test

import (
	"context"
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

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The engine's tests drive the sandbox CLI as an operator does (sandbox
// run --config FILE --json) on domains of the test guest, and read what it
// printed and what the domains are left as.

// scanCommand is the profile's command: it exists in the test guest
// whatever else is installed there (busybox's sh and grep). It finds the
// EICAR test string (exit 0: malicious) or not (exit 1: clean), and leaves
// its count in a log the profile collects. With a pause it first leaves a
// mark that the analysis is under way, then waits: time for a test to
// inject a fault mid-analysis.
func scanCommand(pause int) string {
	s := `grep -c EICAR-STANDARD-ANTIVIRUS-TEST-FILE "$0" >/tmp/scan.log`
	if pause > 0 {
		s = fmt.Sprintf("touch /tmp/analyzing; sleep %d; %s", pause, s)
	}
	return s
}

// engineConfig is a configuration with the rig's VMs in one profile.
func engineConfig(t *testing.T, r *rig, pause int, vms ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\n[plugins.libvirt]\npath = %q\n%s", filepath.Join(r.dir, "state"), programs.path(t, pluginPkg), r.config)
	quoted := make([]string, len(vms))
	for i, vm := range vms {
		fmt.Fprintf(&b, "[vms.%s]\nplugin = \"libvirt\"\nsnapshot = \"ready\"\ncleanup_timeout = \"3m\"\nstart_timeout = \"3m\"\n", vm)
		quoted[i] = fmt.Sprintf("%q", vm)
	}
	fmt.Fprintf(&b, `[engine]
max_starting = 2
[profiles.scan]
vms = [%s]
sample_path = "/tmp/{name}"
command = ["sh", "-c", %q, "{sample}"]
timeout = "2m"
ready_timeout = "2m"
artifacts = ["/tmp/scan.log"]
[profiles.scan.verdict]
malicious_exit_codes = [0]
clean_exit_codes = [1]
`, strings.Join(quoted, ", "), scanCommand(pause))
	file := filepath.Join(r.dir, "engine.toml")
	require.NoError(t, os.WriteFile(file, []byte(b.String()), 0o644))
	return file
}

// samples writes n files: the odd ones hold the EICAR test string, put
// together here so that no file of the repository is the test file; every
// file differs, so that none is a duplicate of another.
func samples(t *testing.T, n int) (paths []string, malicious map[string]bool) {
	t.Helper()
	dir := t.TempDir()
	malicious = map[string]bool{}
	eicar := `X5O!P%@AP[4\PZX54(P^)7CC)7}$` + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*"
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("sample-%02d.txt", i))
		text := fmt.Sprintf("an ordinary file, number %d\n", i)
		if i%2 == 1 {
			text = eicar + "\n" + text
			malicious[filepath.Base(p)] = true
		}
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
		paths = append(paths, p)
	}
	return paths, malicious
}

// runOutput is what `sandbox --json run` prints.
type runOutput struct {
	Reports []struct {
		Sample struct {
			Name string `json:"name"`
		} `json:"sample"`
		Verdict string `json:"verdict"`
		Results []struct {
			VM          string `json:"vm"`
			State       string `json:"state"`
			Verdict     string `json:"verdict"`
			FailedStep  string `json:"failed_step"`
			Error       string `json:"error"`
			Quarantined string `json:"quarantined"`
			Artifacts   []struct {
				Path  string `json:"path"`
				Error string `json:"error"`
			} `json:"artifacts"`
		} `json:"results"`
	} `json:"reports"`
	UnusableVMs map[string]string `json:"unusable_vms"`
}

// run runs `sandbox --json run` on the samples and decodes what it
// printed; the run's own error (a task failed: exit 1) is returned too.
func run(t *testing.T, file, out string, samples ...string) (runOutput, error) {
	t.Helper()
	stdout, stderr, err := cli(t, file, append([]string{"run", "--out", out}, samples...)...)
	var o runOutput
	require.NoError(t, json.Unmarshal([]byte(stdout), &o), "sandbox run: %v\nstdout: %s\nstderr: %s", err, stdout, tail(stderr, 40))
	if err != nil {
		t.Logf("sandbox run exited with %v; stderr:\n%s", err, tail(stderr, 40))
	}
	return o, err
}

// settledClean asserts that the VM is off, unlocked and at its snapshot
// ready, as the plugin reports it.
func settledClean(t *testing.T, d hypervisor.Driver, vm string) {
	t.Helper()
	st, err := d.Status(context.Background(), vm)
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "VM %s is left %+v", vm, st)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock, "VM %s is left %+v", vm, st)
	assert.Equal(t, "ready", st.CurrentSnapshot, "VM %s is left %+v", vm, st)
	assert.Equal(t, hypervisor.PowerSaved, st.Power, "VM %s is restored: its next start resumes ready: %+v", vm, st)
}

// Ten samples on two domains: every sample gets its verdict from the
// guest's scan, both domains take tasks, each collected log says what the
// guest found, and both domains end off, unlocked and restored.
func TestEngineRunsTenSamplesOnTwoDomains(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "scan1"}, vmSpec{name: "scan2"})
	file := engineConfig(t, r, 0, "scan1", "scan2")
	paths, malicious := samples(t, 10)
	out := filepath.Join(r.dir, "results")
	begun := time.Now()
	o, err := run(t, file, out, paths...)
	require.NoError(t, err)
	t.Logf("10 samples on 2 domains in %s", time.Since(begun).Round(time.Millisecond))
	require.Len(t, o.Reports, 10)
	used := map[string]int{}
	for _, rep := range o.Reports {
		want := "clean"
		if malicious[rep.Sample.Name] {
			want = "malicious"
		}
		assert.Equal(t, want, rep.Verdict, "sample %s", rep.Sample.Name)
		require.Len(t, rep.Results, 1)
		res := rep.Results[0]
		assert.Equal(t, "done", res.State, "%s: %s at %s", rep.Sample.Name, res.Error, res.FailedStep)
		used[res.VM]++
		require.Len(t, res.Artifacts, 1)
		assert.Empty(t, res.Artifacts[0].Error)
	}
	assert.Len(t, used, 2, "both domains took tasks: %v", used)
	d := r.driver(t)
	settledClean(t, d, "scan1")
	settledClean(t, d, "scan2")
}

// waitAnalyzing waits until the guest of the domain is running the
// profile's command (it left its mark).
func waitAnalyzing(t *testing.T, r *rig, vm string) {
	t.Helper()
	l, err := r.d.connect()
	require.NoError(t, err)
	defer l.Disconnect()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		dom, err := l.DomainLookupByName(r.domain(vm))
		require.NoError(t, err)
		if _, err := l.QEMUDomainAgentCommand(dom, `{"execute":"guest-file-open","arguments":{"path":"/tmp/analyzing","mode":"r"}}`, 5, 0); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the guest of %s never ran the analysis", vm)
}

// faultRun runs one sample with a command that pauses, injects fault once
// the analysis is under way, and returns what the run printed.
func faultRun(t *testing.T, r *rig, fault func()) runOutput {
	t.Helper()
	file := engineConfig(t, r, 8, "vm1")
	paths, _ := samples(t, 2)
	done := make(chan runOutput, 1)
	go func() {
		o, _ := run(t, file, filepath.Join(r.dir, "results"), paths[1])
		done <- o
	}()
	waitAnalyzing(t, r, "vm1")
	fault()
	select {
	case o := <-done:
		return o
	case <-time.After(5 * time.Minute):
		t.Fatal("sandbox run did not end within 5m of the fault")
	}
	return runOutput{}
}

// cleanOrQuarantined asserts what the engine promises whatever failed: the
// task's result names its end, and the domain is off, unlocked and
// restored, or quarantined with the reason.
func cleanOrQuarantined(t *testing.T, r *rig, o runOutput) {
	t.Helper()
	require.Len(t, o.Reports, 1)
	res := o.Reports[0].Results[0]
	t.Logf("the task ended %s (failed at %q: %s); quarantined: %q", res.State, res.FailedStep, res.Error, res.Quarantined)
	d := r.driver(t)
	st, err := d.Status(context.Background(), "vm1")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "%+v", st)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock, "%+v", st)
	if res.Quarantined == "" {
		assert.Equal(t, hypervisor.PowerSaved, st.Power, "restored: %+v", st)
		assert.Equal(t, "ready", st.CurrentSnapshot)
	}
	assert.Zero(t, r.d.qemuPID(r.domain("vm1")), "no QEMU of the domain runs")
}

// libvirtd killed and started again while the guest analyses: the plugin
// finds libvirtd again, libvirtd finds the domain's QEMU and its agent
// again, the analysis ends with its verdict, and the domain ends clean. The test restarts the daemon every test shares, so it
// runs alone (not in parallel).
func TestEngineLibvirtdRestartedMidTask(t *testing.T) {
	r := newRig(t, vmSpec{name: "vm1"})
	o := faultRun(t, r, func() {
		require.NoError(t, r.d.restart(plugintest.Context(t, time.Minute)))
	})
	cleanOrQuarantined(t, r, o)
	res := o.Reports[0].Results[0]
	assert.Equal(t, "done", res.State, "the guest command outlives libvirtd's restart")
	assert.Equal(t, "malicious", res.Verdict)
	assert.Empty(t, res.Quarantined, "a libvirtd back within the task's time is no reason to quarantine")
}

// The domain's QEMU killed mid-analysis (SIGKILL, from outside libvirt):
// the task fails at analyzing, saying so, and the cleanup restores the
// crashed domain.
func TestEngineQEMUKilledMidAnalysis(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	o := faultRun(t, r, func() {
		pid := r.d.qemuPID(r.domain("vm1"))
		require.NotZero(t, pid)
		require.NoError(t, exec.Command("kill", "-KILL", fmt.Sprint(pid)).Run())
	})
	cleanOrQuarantined(t, r, o)
	res := o.Reports[0].Results[0]
	assert.Equal(t, "failed", res.State)
	assert.Equal(t, "analyzing", res.FailedStep)
	assert.Empty(t, res.Quarantined)
}

// A snapshot libvirt knows but the image lost (deleted with qemu-img while
// the domain was off): no restore pretends to succeed; the task fails and
// the domain is quarantined with the reason, off and unlocked.
func TestEngineSnapshotMissingFromImage(t *testing.T) {
	t.Parallel()
	r := newRig(t, vmSpec{name: "vm1"})
	out, err := exec.Command("qemu-img", "snapshot", "-d", "ready", r.disk("vm1")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	file := engineConfig(t, r, 0, "vm1")
	paths, _ := samples(t, 1)
	o, err := run(t, file, filepath.Join(r.dir, "results"), paths...)
	assert.Error(t, err, "a task failed: exit status 1")
	require.Len(t, o.Reports, 1)
	res := o.Reports[0].Results[0]
	t.Logf("the task ended %s (failed at %q: %s); quarantined: %q; unusable: %v", res.State, res.FailedStep, res.Error, res.Quarantined, o.UnusableVMs)
	assert.Equal(t, "failed", res.State)
	reason := res.Quarantined + res.Error + o.UnusableVMs["vm1"]
	assert.Contains(t, reason, "does not", "the reason names the missing snapshot")
	assert.NotEmpty(t, res.Quarantined+o.UnusableVMs["vm1"], "the domain is quarantined")
	d := r.driver(t)
	st, err := d.Status(context.Background(), "vm1")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff(), "%+v", st)
	assert.Equal(t, hypervisor.LockUnlocked, st.Lock, "%+v", st)
	assert.Zero(t, r.d.qemuPID(r.domain("vm1")))
}
