package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// operationsFake is a fake whose world outlives each CLI run, with a VM
// that another run may be using (busy), one whose cleanup fails (broken)
// and one that is clean; extra goes into busy's table.
func operationsFake(busyFaults string) string {
	return fmt.Sprintf(`[plugins.fake]
path = %q

[plugins.fake.config]
state_dir = "fake-world"
[plugins.fake.config.timing]
poweroff = "50ms"
unlock_after_stop = "50ms"

[plugins.fake.config.vms.busy]
state = "running"
snapshots = ["clean"]
%s
[plugins.fake.config.vms.broken]
state = "running"
snapshots = ["clean"]
[plugins.fake.config.vms.broken.faults]
restore_failures = 99

[plugins.fake.config.vms.tidy]
snapshots = ["clean"]

[lifecycle]
restore_timeout = "1s"
`, fakeBin, busyFaults)
}

// vmJSON is one VM of `sandbox --json vm list`.
type vmJSON struct {
	Plugin, Name, Power string
	Lease               *struct {
		PID     int
		Command string
		Since   time.Time
		Live    bool
	}
	Quarantine *struct{ Reason string }
}

type listJSON struct{ VMs []vmJSON }

func (l listJSON) vm(t *testing.T, name string) vmJSON {
	t.Helper()
	for _, v := range l.VMs {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("VM %q not listed", name)
	return vmJSON{}
}

func listVMs(t *testing.T, dir, conf string) listJSON {
	t.Helper()
	r := sandboxIn(t, dir, conf, "--json", "vm", "list")
	var out listJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), "stdout: %s\nstderr: %s", r.stdout, r.stderr)
	return out
}

// `sandbox vm list` shows who holds each VM (pid, command, since when),
// the holder that died holding one, and the quarantined VMs with why; `vm
// reconcile --all` then cleans what the dead holder left, leaves clean VMs
// alone and reports the quarantined ones.
func TestVMListShowsLeasesAndQuarantineAndReconcileCleansWhatACrashLeft(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	plain := operationsFake("")
	r := sandboxIn(t, dir, plain, "vm", "cleanup", "broken")
	require.Equal(t, 1, r.code, "the broken VM's cleanup fails: %s", r.stderr)

	// Another run holds busy: a cleanup whose every call on the VM hangs.
	slow := filepath.Join(dir, "slow.toml")
	require.NoError(t, os.WriteFile(slow, []byte("state_dir = \"state\"\n"+
		operationsFake("[plugins.fake.config.vms.busy.faults]\nslow = \"1m\"\n")), 0o644))
	holder := exec.Command(sandboxBin, "--config", slow, "vm", "cleanup", "busy")
	require.NoError(t, holder.Start())
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	var list listJSON
	require.Eventually(t, func() bool {
		list = listVMs(t, dir, plain)
		return list.vm(t, "busy").Lease != nil
	}, 20*time.Second, 100*time.Millisecond, "the holder took busy's lease")
	lease := list.vm(t, "busy").Lease
	assert.Equal(t, holder.Process.Pid, lease.PID)
	assert.Contains(t, lease.Command, "vm cleanup busy")
	assert.True(t, lease.Live)
	assert.WithinDuration(t, time.Now(), lease.Since, time.Minute)
	assert.Nil(t, list.vm(t, "tidy").Lease)
	require.NotNil(t, list.vm(t, "broken").Quarantine)
	assert.Contains(t, list.vm(t, "broken").Quarantine.Reason, "restore")

	r = sandboxIn(t, dir, plain, "vm", "list")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^PLUGIN\s+VM\s+POWER\s+ID\s+LEASE\s+QUARANTINED$`, r.stdout)
	assert.Regexp(t, fmt.Sprintf(`(?m)^fake\s+busy\s+running\s+\S+\s+pid %d \(sandbox .*vm cleanup busy\) since `, holder.Process.Pid), r.stdout)
	assert.Regexp(t, `(?m)^fake\s+broken\s+off\s+\S+\s+-\s+since \S+ \S+: `, r.stdout)

	r = sandboxIn(t, dir, plain, "vm", "status", "busy")
	assert.Regexp(t, fmt.Sprintf(`(?m)^Lease:\s+pid %d \(`, holder.Process.Pid), r.stdout, "vm status names the holder too")

	// A reconciliation leaves a VM in use alone.
	r = sandboxIn(t, dir, plain, "--json", "vm", "reconcile", "busy")
	assert.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"outcome": "in use"`)

	// The holder dies (kill -9): its record stays, marked dead.
	require.NoError(t, holder.Process.Kill())
	_ = holder.Wait()
	lease = listVMs(t, dir, plain).vm(t, "busy").Lease
	require.NotNil(t, lease, "the dead holder's record is kept for the reconciliation")
	assert.False(t, lease.Live)
	r = sandboxIn(t, dir, plain, "vm", "list")
	assert.Contains(t, r.stdout, fmt.Sprintf("left by pid %d", holder.Process.Pid))

	r = sandboxIn(t, dir, plain, "--json", "vm", "reconcile", "--all")
	assert.Equal(t, 1, r.code, "the quarantined VM is still unusable: %s", r.stderr)
	var rec struct {
		VMs []struct {
			VM, Outcome, Detail string
			Report              *struct {
				Reconciled bool
				LeftBy     *struct{ PID int } `json:"left_by"`
				Final      struct{ Power, Lock string }
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rec), r.stdout)
	outcomes := map[string]string{}
	for _, v := range rec.VMs {
		outcomes[v.VM] = v.Outcome
		if v.VM == "busy" {
			require.NotNil(t, v.Report)
			assert.True(t, v.Report.Reconciled)
			require.NotNil(t, v.Report.LeftBy)
			assert.Equal(t, holder.Process.Pid, v.Report.LeftBy.PID)
			assert.Equal(t, "off", v.Report.Final.Power)
			assert.Equal(t, "unlocked", v.Report.Final.Lock)
		}
	}
	assert.Equal(t, map[string]string{"busy": "cleaned", "tidy": "clean", "broken": "quarantined"}, outcomes)
	assert.Nil(t, listVMs(t, dir, plain).vm(t, "busy").Lease, "the reconciliation's own lease is gone with it")

	r = sandboxIn(t, dir, plain, "vm", "reconcile", "--all")
	assert.Regexp(t, `(?m)^fake\s+busy\s+clean\s`, r.stdout, "nothing left to do")
	assert.Regexp(t, `(?m)^fake\s+broken\s+quarantined\s`, r.stdout)
}

func TestReconcileOfOneVMLeftRunningSaysWhatItDid(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := operationsFake("")
	r := sandboxIn(t, dir, conf, "vm", "reconcile", "busy")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "reconcile busy (plugin fake): done")
	assert.Contains(t, r.stdout, "The VM was left behind by an earlier run (left running) and has been cleaned.")
	r = sandboxIn(t, dir, conf, "vm", "reconcile", "busy")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `(?m)^check\s+clean\s`, r.stdout)
	assert.NotContains(t, r.stdout, "left behind")

	for _, args := range [][]string{{"vm", "reconcile"}, {"vm", "reconcile", "--all", "busy"}} {
		r = sandboxIn(t, dir, conf, args...)
		assert.Equal(t, 2, r.code, "%v: %s", args, r.stderr)
	}
}
