package fake

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func TestTheJournalHasOneLinePerCommandSent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := openFake(t, dir, `
		journal = "journal.jsonl"
		[timing]
		poweroff = "0s"
		unlock_after_stop = "0s"
		[vms.a]
		state = "paused"
		snapshots = ["clean"]
		[vms.b]
	`)
	before := time.Now().UTC()
	_, _ = d.Status(testCtx(t), "a")
	_, _ = d.ListVMs(testCtx(t))
	require.NoError(t, d.Stop(testCtx(t), "b", hypervisor.StopPowerOff), "off already: sends nothing")
	requireCode(t, d.Stop(testCtx(t), "a", hypervisor.StopACPI), hypervisor.CodeInvalidState, hypervisor.OpStop, "a")
	require.NoError(t, d.Stop(testCtx(t), "a", hypervisor.StopPowerOff))
	require.NoError(t, d.Restore(testCtx(t), "a", ""))
	requireCode(t, d.Restore(testCtx(t), "a", "nope"), hypervisor.CodeNotFound, hypervisor.OpRestore, "a")

	path := filepath.Join(dir, "journal.jsonl")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, 4, strings.Count(string(data), "\n"), "one line each")
	assert.Contains(t, string(data), `"op":"stop","vm":"a","method":"poweroff","outcome":"ok"`)

	entries, err := ReadJournal(path)
	require.NoError(t, err)
	require.Len(t, entries, 4)
	assert.Equal(t, d.Journal(), entries)
	assert.Equal(t, "invalid_state", entries[0].Outcome)
	assert.Equal(t, `stop "a": invalid state: Invalid machine state: Paused`, entries[0].Error)
	assert.False(t, entries[0].Time.Before(before.Truncate(time.Second)))
	assert.Equal(t, Entry{Time: entries[1].Time, Op: "stop", VM: "a", Method: hypervisor.StopPowerOff, Outcome: "ok"}, entries[1])
	assert.Equal(t, Entry{Time: entries[2].Time, Op: "restore", VM: "a", Snapshot: "clean", Outcome: "ok"}, entries[2])
	assert.Equal(t, "not_found", entries[3].Outcome)
}

func TestReadJournalNamesTheBadLine(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "j.jsonl")
	require.NoError(t, os.WriteFile(path, []byte("{\"op\":\"stop\"}\nnot json\n"), 0o644))
	_, err := ReadJournal(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "j.jsonl:2")
}
