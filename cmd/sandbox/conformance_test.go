package main_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// conformanceConfig is a fake with fast timings, a VM for most roles of
// the suite's target, and violations.
func conformanceConfig(violations string) string {
	return fmt.Sprintf(`[plugins.fake]
path = %q
env = ["GORACE=atexit_sleep_ms=0"]

[plugins.fake.config]
violations = [%s]
[plugins.fake.config.timing]
start = "10ms"
acpi_shutdown = "20ms"
poweroff = "10ms"
emergency = "5ms"
restore = "10ms"
unlock_after_stop = "20ms"
guest_ready = "10ms"

[plugins.fake.config.vms.subject]
snapshots = ["base", "clean"]
[plugins.fake.config.vms.stale]
snapshots = ["clean"]
[plugins.fake.config.vms.stale.faults]
stale_lock_after_stop = true

[vms.subject]
plugin = "fake"
`, fakeBin, violations)
}

var fastSuite = []string{"--settle", "3s", "--acpi", "1s", "--deadline", "20ms", "--margin", "1s", "--guest-sleep", "sleep 3"}

type conformanceJSON struct {
	Plugin  string
	VM      string
	Driver  struct{ Name string }
	Summary map[string]int
	Results []struct {
		Check, Clause, Outcome, Message string
		Rules                           []string
	}
	Unchecked []struct {
		Rule     string
		Fixtures []string
		How      []string
	}
}

func runConformance(t *testing.T, config string, args ...string) (result, conformanceJSON) {
	t.Helper()
	r := sandbox(t, config, append(append([]string{"--json", "conformance", "--plugin", "fake"}, fastSuite...), args...)...)
	var out conformanceJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	return r, out
}

func TestConformanceOfTheFakeReportsNoFailure(t *testing.T) {
	t.Parallel()
	r, out := runConformance(t, conformanceConfig(""), "--lock-vm", "stale")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "subject", out.VM, "the plugin's first [vms.NAME]")
	assert.Equal(t, "fake", out.Driver.Name)
	assert.Zero(t, out.Summary["fail"])
	assert.Equal(t, len(out.Results), out.Summary["pass"]+out.Summary["skip"])
	for _, res := range out.Results {
		assert.Regexp(t, `^§\d+\.\d+[a-z]?$`, res.Clause, res.Check)
		require.NotEmpty(t, res.Rules, res.Check)
		assert.Equal(t, res.Clause, res.Rules[0], "a check's rules begin with its clause")
		if res.Check == "Unlock/ReleasesLingeringLock" {
			assert.Equal(t, "pass", res.Outcome)
		}
	}
	// No --peer-vm, --deadline-vm or --unmapped-vm: their rules are named,
	// with the flag that would check them.
	var rules []string
	for _, u := range out.Unchecked {
		rules = append(rules, u.Rule)
		if u.Rule == "§13.1a" {
			assert.Equal(t, []string{"PeerVM"}, u.Fixtures)
			assert.Contains(t, u.How[0], "--peer-vm")
		}
	}
	assert.Equal(t, []string{"§3.2b", "§12.1b", "§13.1a"}, rules)
}

func TestConformanceNamesTheRulesItCouldNotCheck(t *testing.T) {
	t.Parallel()
	r := sandbox(t, conformanceConfig(""), append(append([]string{"conformance", "--plugin", "fake"}, fastSuite...),
		"--run", "^Status/", "--other-snapshot", "base")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "rules of the contract stayed unchecked for want of a fixture:")
	assert.Regexp(t, `(?m)^  §3\.2b\s+Status/UnmappedStateIsUnknown\s+give --unmapped-vm \(Target\.UnmappedVM\): a VM in a state the driver has no word for$`, r.stdout)
	assert.Regexp(t, `(?m)^  §3\.3b\s+Status/ReportsLingeringLock\s+give --lock-vm`, r.stdout)
}

func TestConformanceFailsWithExitStatus1AndATable(t *testing.T) {
	t.Parallel()
	r := sandbox(t, conformanceConfig(`"stop-off-fails"`),
		append(append([]string{"conformance", "--plugin", "fake"}, fastSuite...), "--run", "^Stop/")...)
	assert.Equal(t, 1, r.code, r.stderr)
	assert.Regexp(t, `(?m)^CHECK\s+RULES\s+RESULT\s+TIME\s+MESSAGE$`, r.stdout)
	assert.Regexp(t, `(?m)^Stop/OffLikeIsNoOp\s+§5\.2a\s+fail\s+\S+\s+Stop\(acpi\) of a VM that is off: `, r.stdout)
	assert.Regexp(t, `(?m)^Stop/Ladder\s+§5\.5\s+pass\s`, r.stdout)
	assert.Regexp(t, `(?m)^Stop/PowerOff\s+§5\.1a §5\.1b\s+pass\s`, r.stdout, "every rule of a check")
	assert.NotContains(t, r.stdout, "Restore/")
	assert.Contains(t, r.stdout, "on VM subject: 5 passed, 1 failed, 1 skipped")
}

func TestConformanceRunSelectsChecks(t *testing.T) {
	t.Parallel()
	r, out := runConformance(t, conformanceConfig(""), "--vm", "subject", "--run", "Restore/|Errors/")
	require.Equal(t, 0, r.code, r.stderr)
	var names []string
	for _, res := range out.Results {
		names = append(names, res.Check)
		assert.True(t, strings.HasPrefix(res.Check, "Restore/") || strings.HasPrefix(res.Check, "Errors/"), res.Check)
	}
	assert.Contains(t, names, "Restore/UnknownSnapshotIsNotFound")
	assert.Contains(t, names, "Errors/CarryOperationAndVM")
}

func TestConformanceListNeedsNoConfiguration(t *testing.T) {
	t.Parallel()
	r := sandbox(t, "", "conformance", "--list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^Restore/UnknownSnapshotIsNotFound\s+§7\.1b\s+restoring a snapshot`, r.stdout)

	r = sandbox(t, "", "--json", "conformance", "--list")
	require.Equal(t, 0, r.code, r.stderr)
	var out struct {
		Checks []struct{ Name, Clause string }
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out))
	assert.NotEmpty(t, out.Checks)
}

func TestConformanceUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		config string
		args   []string
		msg    string
	}{
		{"no plugin", conformanceConfig(""), nil, "needs --plugin NAME"},
		{"an unknown plugin", conformanceConfig(""), []string{"--plugin", "vbox"}, `no plugin named "vbox"`},
		{"a bad --run", conformanceConfig(""), []string{"--plugin", "fake", "--run", "("}, "--run"},
		{"no VM to use", fmt.Sprintf("[plugins.fake]\npath = %q\n[plugins.other]\npath = %q\n", fakeBin, fakeBin),
			[]string{"--plugin", "fake"}, `belongs to plugin "fake"; name a VM of the plugin with --vm, or add a [vms.NAME] table with plugin = "fake"`},
		{"every VM given another role", conformanceConfig(""), []string{"--plugin", "fake", "--peer-vm", "subject"},
			`that belongs to plugin "fake" (subject) is given another role`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := sandbox(t, tc.config, append([]string{"conformance"}, tc.args...)...)
			assert.Equal(t, 2, r.code, r.stderr)
			assert.Contains(t, r.stderr, tc.msg)
		})
	}
}

func TestConformanceOfAVMThePluginLacksFails(t *testing.T) {
	t.Parallel()
	r := sandbox(t, conformanceConfig(""), "conformance", "--plugin", "fake", "--vm", "ghost")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `cannot use VM "ghost" (Target.VM): status "ghost": not found`)
}
