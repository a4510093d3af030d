package fake

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/configfile"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func TestEmptyTableGivesEveryCapabilityAndNoVMs(t *testing.T) {
	t.Parallel()
	d := newFake(t, "")
	info, err := d.Info(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, "fake", info.Name)
	assert.Equal(t, hypervisor.ContractVersion, info.ContractVersion)
	assert.Equal(t, hypervisor.NewCapabilities(hypervisor.AllCapabilities...), info.Capabilities)
	vms, err := d.ListVMs(testCtx(t))
	require.NoError(t, err)
	assert.Empty(t, vms)
}

func TestDefaultTimingIsSmallAndComplete(t *testing.T) {
	t.Parallel()
	tm := DefaultConfig().Timing
	for name, d := range map[string]time.Duration{
		"start": tm.Start, "acpi_shutdown": tm.ACPIShutdown, "poweroff": tm.PowerOff,
		"emergency": tm.Emergency, "restore": tm.Restore, "unlock_after_stop": tm.UnlockAfterStop,
		"guest_ready": tm.GuestReady,
	} {
		assert.Positive(t, d, name)
		assert.LessOrEqual(t, d, 500*time.Millisecond, name)
	}
}

func TestVMTimingOverridesOnlyTheKeysItSets(t *testing.T) {
	t.Parallel()
	d := newFake(t, `
		[timing]
		start = "70ms"
		poweroff = "80ms"
		[vms.a]
		[vms.a.timing]
		poweroff = "0s"
		restore = "1s"
	`)
	got := d.vms["a"].timing
	want := DefaultConfig().Timing
	want.Start, want.PowerOff, want.Restore = 70*time.Millisecond, 0, time.Second
	assert.Equal(t, want, got)
}

func TestConfigMistakesNameTheFileLineAndKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		table string
		line  int
		key   string
		msg   string
	}{
		{"an unknown key", "[vms.a]\nstat = \"off\"", 3, "plugins.fake.config.vms.a.stat", "unknown key"},
		{"an unknown state", "[vms.a]\nstate = \"on\"", 3, "plugins.fake.config.vms.a.state", `unknown state "on"`},
		{"an unknown capability", "capabilities = [\"list\", \"teleport\"]", 2, "plugins.fake.config.capabilities", `"teleport"`},
		{"a current snapshot that does not exist", "[vms.a]\nsnapshots = [\"clean\"]\ncurrent_snapshot = \"dirty\"", 4,
			"plugins.fake.config.vms.a.current_snapshot", "not one of snapshots"},
		{"an online snapshot that does not exist", "[vms.a]\nonline_snapshots = [\"live\"]", 3,
			"plugins.fake.config.vms.a.online_snapshots", "not one of snapshots"},
		{"a snapshot listed twice", "[vms.a]\nsnapshots = [\"x\", \"x\"]", 3, "plugins.fake.config.vms.a.snapshots", "twice"},
		{"a stale lock on a running VM", "[vms.a]\nstate = \"running\"\nlocked = true", 4, "plugins.fake.config.vms.a.locked", "without a process"},
		{"a negative timing", "[timing]\nrestore = \"-1s\"", 3, "plugins.fake.config.timing.restore", "negative"},
		{"a negative VM timing", "[vms.a.timing]\nstart = \"-1s\"", 3, "plugins.fake.config.vms.a.timing.start", "negative"},
		{"a malformed duration", "[timing]\nstart = \"soon\"", 3, "", "invalid duration"},
		{"an unknown power-off error", "[vms.a.faults]\npoweroff_error = \"boom\"", 3,
			"plugins.fake.config.vms.a.faults.poweroff_error", `unknown error "boom"`},
		{"a negative failure count", "[vms.a.faults]\nstart_failures = -1", 3, "plugins.fake.config.vms.a.faults.start_failures", "negative"},
		{"an unknown exit operation", "[vms.a.faults]\nexit_during = [\"reboot\"]", 3,
			"plugins.fake.config.vms.a.faults.exit_during", `"reboot"`},
		{"a VM name that is a path", "[vms.\"../a\"]\nstate = \"off\"", 2, `plugins.fake.config.vms."../a"`, "path separator"},
		{"an unknown violation", "violations = [\"early-off\", \"lying\"]", 2, "plugins.fake.config.violations", `unknown violation "lying"`},
		{"a raw state beside a state", "[vms.a]\nstate = \"off\"\nraw_state = \"x\"", 4, "plugins.fake.config.vms.a.raw_state", "not both"},
		{"a raw state the driver knows", "[vms.a]\nraw_state = \"PowerOff\"", 3, "plugins.fake.config.vms.a.raw_state", "knows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			_, err := New(configIn(t, dir, tc.table), hclog.NewNullLogger())
			require.Error(t, err)
			var ce *configfile.Error
			require.True(t, errors.As(err, &ce), "%T: %v", err, err)
			assert.Equal(t, filepath.Join(dir, "config.toml"), ce.File)
			assert.Equal(t, tc.line, ce.Line, "%v", err)
			if tc.key != "" {
				assert.Equal(t, tc.key, ce.Key, "%v", err)
			}
			assert.Contains(t, ce.Msg, tc.msg)
		})
	}
}

func TestRelativePathsResolveAgainstTheConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := openFake(t, dir, `
		journal = "journal.jsonl"
		state_dir = "state"
		[vms.a]
		state = "running"
	`)
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	entries, err := ReadJournal(filepath.Join(dir, "journal.jsonl"))
	require.NoError(t, err)
	assert.Len(t, entries, 1)
	assert.FileExists(t, filepath.Join(dir, "state", worldFile))
	assert.Equal(t, filepath.Join(dir, "state", "guests"), d.scratch)
}

func TestAJournalThatCannotBeOpenedIsAConfigError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := New(configIn(t, dir, `journal = "missing/dir/journal.jsonl"`), nil)
	var ce *configfile.Error
	require.True(t, errors.As(err, &ce), "%T: %v", err, err)
	assert.Equal(t, "plugins.fake.config.journal", ce.Key)
	assert.Equal(t, 2, ce.Line)
}

func TestNewDriverValidatesAGoConfig(t *testing.T) {
	t.Parallel()
	c := DefaultConfig()
	c.VMs = map[string]VMConfig{"a": {State: "sideways"}}
	_, err := NewDriver(c, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "vms.a.state")

	c.VMs = map[string]VMConfig{"a": {State: "running", Snapshots: []string{"s1", "s2"}}}
	d, err := NewDriver(c, nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	st := status(t, d, "a")
	assert.Equal(t, hypervisor.PowerRunning, st.Power)
	assert.Equal(t, "s2", st.CurrentSnapshot, "the current snapshot defaults to the most recent")
}

func TestEveryExitOperationIsAccepted(t *testing.T) {
	t.Parallel()
	for _, op := range exitOps {
		c := DefaultConfig()
		c.VMs = map[string]VMConfig{"a": {Faults: Faults{ExitDuring: []string{op}}}}
		assert.Nil(t, c.validate(), fmt.Sprint(op))
	}
}
