package libvirt_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// suiteRig has a domain of the test guest for every role of the
// conformance target:
//   - subject (at ready, with a second snapshot other) and peer;
//   - lock: after every stop another process holds its disk for seconds,
//     a job of another client on an off domain's disk;
//   - slow: the slow-restore disk, whose revert of an off domain takes
//     seconds, longer than the suite's margin;
//   - odd: a guest suspended to RAM (pmsuspended), a state the contract
//     has no word for.
func suiteRig(t *testing.T) *rig {
	return newRig(t,
		vmSpec{name: "subject"},
		vmSpec{name: "peer"},
		vmSpec{name: "lock", kind: holdsAfterStop},
		vmSpec{name: "slow", kind: slowRevert},
		vmSpec{name: "odd", kind: pmSuspended},
	)
}

// `sandbox conformance --plugin libvirt`, as an operator runs it, passes on
// real domains with every fixture given: no check fails, and the only
// checks skipped are those of capabilities the driver does not leave
// undeclared (it declares them all), and Concurrency/TwoVMs when this
// machine reverts an off domain too quickly to time (42 ms was seen).
func TestConformanceThroughTheCLI(t *testing.T) {
	t.Parallel()
	r := suiteRig(t)
	var b strings.Builder
	fmt.Fprintf(&b, "state_dir = %q\n[plugins.libvirt]\npath = %q\n%s", filepath.Join(r.dir, "state"), programs.path(t, pluginPkg), r.config)
	for _, v := range r.vms {
		fmt.Fprintf(&b, "[vms.%s]\nplugin = \"libvirt\"\n", v.name)
	}
	file := filepath.Join(r.dir, "cli.toml")
	require.NoError(t, os.WriteFile(file, []byte(b.String()), 0o644))
	var rep struct {
		Results   []conformance.Result `json:"results"`
		Summary   map[string]int       `json:"summary"`
		Unchecked []any                `json:"unchecked"`
	}
	out, stderr, err := cli(t, file, "conformance", "--plugin", "libvirt", "--vm", "subject", "--snapshot", "ready",
		"--other-snapshot", "other", "--peer-vm", "peer", "--lock-vm", "lock", "--deadline-vm", "slow", "--unmapped-vm", "odd",
		"--settle", "2m", "--acpi", "10s", "--guest-sleep", "sleep 60")
	require.NoError(t, json.Unmarshal([]byte(out), &rep), "sandbox conformance: %v\n%s\n%s", err, out, stderr)
	skips := 0
	for _, res := range rep.Results {
		if res.Outcome == conformance.Skip && !res.TooQuickToTime() {
			skips++
		}
		switch res.Outcome {
		case conformance.Fail:
			t.Errorf("%s %s (%s): %s", res.Outcome, res.Check, res.Clause, res.Message)
			for _, l := range res.Log {
				t.Log("  " + l)
			}
		case conformance.Skip:
			t.Logf("%s %s: %s", res.Outcome, res.Check, res.Message)
		}
	}
	t.Logf("summary: %v", rep.Summary)
	assert.NoError(t, err, "the exit status says no check failed")
	assert.Equal(t, 0, rep.Summary["fail"], "no check fails")
	assert.Equal(t, 2, skips, "only the two checks of undeclared capabilities are skipped (and Concurrency/TwoVMs when restores are too quick to time)")
	assert.Empty(t, rep.Unchecked, "every fixture is given: no rule stays unchecked")
	assert.Greater(t, rep.Summary["pass"], 50)
	if t.Failed() {
		t.Logf("stderr of sandbox conformance:\n%s", tail(stderr, 80))
	}
}

// cli runs the sandbox CLI on a configuration file with --json and returns
// its stdout, stderr and error.
func cli(t testing.TB, file string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(programs.path(t, cliPkg), append([]string{"--config", file, "--json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}
