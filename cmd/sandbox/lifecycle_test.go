package main_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// statefulFake keeps the fake's world in dir between CLI runs, as a real
// hypervisor keeps its VMs.
func statefulFake(faults string) string {
	return fmt.Sprintf(`[plugins.fake]
path = %q

[plugins.fake.config]
state_dir = "fake-world"
[plugins.fake.config.timing]
poweroff = "200ms"
unlock_after_stop = "100ms"
restore = "50ms"
start = "50ms"

[plugins.fake.config.vms.win10-64-defender]
state = "running"
snapshots = ["clean", "dirty"]
current_snapshot = "dirty"
%s
[vms.win10-64-defender]
snapshot = "clean"
stop_ladder = ["poweroff", "emergency"]
`, fakeBin, faults)
}

type report struct {
	Operation   string
	Path        string
	Error       string
	Quarantined bool
	StatusCalls int `json:"status_calls"`
	Steps       []struct {
		Name     string
		Outcome  string
		Duration int64 `json:"duration_ns"`
		Deadline int64 `json:"deadline_ns"`
	}
	Final struct {
		Power           string
		Lock            string
		CurrentSnapshot string `json:"current_snapshot"`
	}
}

func parseReport(t *testing.T, r result) report {
	t.Helper()
	var rep report
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	return rep
}

func TestVMCleanupJSONReportsStepsAndDurations(t *testing.T) {
	t.Parallel()
	r := sandbox(t, statefulFake(""), "--json", "vm", "cleanup", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	rep := parseReport(t, r)
	assert.Equal(t, "cleanup", rep.Operation)
	assert.Equal(t, "native", rep.Path)
	require.NotEmpty(t, rep.Steps)
	assert.Equal(t, "driver: poweroff", rep.Steps[0].Name)
	assert.GreaterOrEqual(t, rep.Steps[0].Duration, int64(150e6), "the 200ms power-off shows its duration")
	assert.Equal(t, "off", rep.Final.Power)
	assert.Equal(t, "unlocked", rep.Final.Lock)
	assert.Equal(t, "clean", rep.Final.CurrentSnapshot, "the configured snapshot, not the current one")
}

func TestVMStopStartRestoreUnlockThroughTheCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := statefulFake("")

	r := sandboxIn(t, dir, conf, "--json", "vm", "stop", "--method", "poweroff", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	rep := parseReport(t, r)
	assert.Equal(t, "stop poweroff", rep.Steps[0].Name)
	assert.Equal(t, "off", rep.Steps[0].Outcome)
	assert.Equal(t, int64(15e9), rep.Steps[0].Deadline, "the default power-off deadline")

	r = sandboxIn(t, dir, conf, "vm", "status", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "Power:            off", "the fake's world persisted between runs")

	r = sandboxIn(t, dir, conf, "vm", "unlock", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "unlock win10-64-defender (plugin fake): done")

	r = sandboxIn(t, dir, conf, "--json", "vm", "restore", "--snapshot", "dirty", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "dirty", parseReport(t, r).Final.CurrentSnapshot)

	r = sandboxIn(t, dir, conf, "vm", "start", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	r = sandboxIn(t, dir, conf, "--json", "vm", "status", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"lock": "locked"`)

	r = sandboxIn(t, dir, conf, "vm", "restore", "--snapshot", "nope", "win10-64-defender")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "Could not find a snapshot named 'nope'")
	assert.Contains(t, r.stdout, "restore win10-64-defender (plugin fake): FAILED", "the report shows what was done before")

	r = sandboxIn(t, dir, conf, "vm", "stop", "--method", "gently", "win10-64-defender")
	assert.Equal(t, 2, r.code, "a bad flag value is a usage error")
	r = sandboxIn(t, dir, conf, "--json", "vm", "stop", "--method", "gently", "win10-64-defender")
	assert.Equal(t, 2, r.code, "with --json too")
	assert.Contains(t, r.stderr, `--method "gently"`)
	r = sandboxIn(t, dir, conf, "vm", "cleanup", "--no-restore", "--snapshot", "clean", "win10-64-defender")
	assert.Equal(t, 2, r.code)
}

func TestFailedCleanupQuarantinesUntilAnOperatorCleansSuccessfully(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := statefulFake("[plugins.fake.config.vms.win10-64-defender.faults]\nrestore_failures = 2\n")

	r := sandboxIn(t, dir, conf, "vm", "cleanup", "win10-64-defender")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stdout, "QUARANTINED", "native cleanup and the composed fallback both failed")

	r = sandboxIn(t, dir, conf, "--json", "vm", "status", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	var st struct{ Quarantine *struct{ Reason string } }
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	require.NotNil(t, st.Quarantine, "the quarantine outlives the process: %s", r.stdout)
	assert.Contains(t, st.Quarantine.Reason, "restore")

	r = sandboxIn(t, dir, conf, "--json", "vm", "cleanup", "win10-64-defender")
	require.Equal(t, 0, r.code, r.stderr)
	assert.False(t, parseReport(t, r).Quarantined)
	r = sandboxIn(t, dir, conf, "vm", "status", "win10-64-defender")
	assert.Contains(t, r.stdout, "Quarantined:      no")
}
