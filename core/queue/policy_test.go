package queue_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// The pool's policies (what makes a VM unusable, when a task moves to
// another VM) hold the same through both front doors: each case below
// runs through `sandbox run` and through the service's worker, and
// expects the same.

// brokenLeases are leases whose broken key cannot be taken at all (its
// lease file is unwritable, say), as distinct from held by someone.
type brokenLeases struct {
	lifecycle.Leases
	broken string
}

func (b brokenLeases) TryAcquire(key string) (func(), *lifecycle.LeaseHolder, error) {
	if key == b.broken {
		return nil, nil, errors.New("open leases/fake_vm1.lock: permission denied")
	}
	return b.Leases.(lifecycle.TryLeases).TryAcquire(key)
}

// policyRig is two fake VMs of one profile, in process.
type policyRig struct {
	driver     *sdk.InProcess
	quarantine *lifecycle.MemoryQuarantine
	manager    *lifecycle.Manager
	pool       *engine.Pool
	control    *fake.Driver
}

func newPolicyRig(t *testing.T, leases lifecycle.Leases, vm1 fake.VMConfig) *policyRig {
	t.Helper()
	dir := t.TempDir()
	c := fake.Config{StateDir: filepath.Join(dir, "world"), Timing: fake.FastTiming(),
		VMs: map[string]fake.VMConfig{"vm1": vm1, "vm2": fake.RunningAt("clean")}}
	cfg := sdk.ConfigFromTOML("fake", filepath.Join(dir, "config.toml"), []byte(c.TOML("fake")))
	ctx := plugintest.Context(t, 30*time.Second)
	d, err := sdk.ServeInProcess(ctx, fake.New, cfg, nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	control, err := fake.New(cfg, nil)
	require.NoError(t, err)
	t.Cleanup(func() { control.(*fake.Driver).Close() })
	r := &policyRig{driver: d, quarantine: lifecycle.NewMemoryQuarantine(), control: control.(*fake.Driver)}
	r.manager = lifecycle.New(lifecycle.Options{Quarantine: r.quarantine, Leases: leases})
	var vms []lifecycle.VM
	for _, name := range []string{"vm1", "vm2"} {
		vms = append(vms, lifecycle.VM{Name: name, Plugin: "fake", Driver: d, Settings: cellLifecycle()})
	}
	e := engine.New(engine.Options{Lifecycle: r.manager, Events: engine.NewEvents()})
	r.pool, err = engine.NewPool(ctx, e, vms, []config.Profile{cellProfile("vm1", "vm2")})
	require.NoError(t, err)
	return r
}

// analyse runs one sample through the door and expects it done on vm2.
func (r *policyRig) analyse(t *testing.T, d door, name string) *engine.Result {
	t.Helper()
	ctx := plugintest.Context(t, time.Minute)
	res, _ := d.run(t, ctx, r.pool, r.manager, t.TempDir(), sampleFile(t, name, name), func(func()) {})
	return res
}

func TestPoolPoliciesAreTheSameThroughBothDoors(t *testing.T) {
	for _, d := range doors {
		t.Run(d.name, func(t *testing.T) {
			t.Run("a VM whose lease cannot be taken leaves service; the task moves on", func(t *testing.T) {
				t.Parallel()
				r := newPolicyRig(t, brokenLeases{Leases: lifecycle.NewLocalLeases(), broken: "fake/vm1"}, fake.RunningAt("clean"))
				res := r.analyse(t, d, "a.txt")
				assert.Equal(t, engine.StepDone, res.State, res.Error)
				assert.Equal(t, "vm2", res.VM)
				assert.Contains(t, r.pool.Unusable()["vm1"], "its lease could not be taken: open leases/fake_vm1.lock: permission denied")
				_, q, err := r.quarantine.Get(context.Background(), "fake/vm1")
				require.NoError(t, err)
				assert.False(t, q, "nothing is known to be wrong with the VM itself")
			})
			t.Run("a VM another process holds is passed over, not given up", func(t *testing.T) {
				t.Parallel()
				r := newPolicyRig(t, lifecycle.NewLocalLeases(), fake.RunningAt("clean"))
				vm1 := r.pool.VMs()["vm1"]
				held, err := r.manager.Lease(plugintest.Context(t, time.Minute), vm1)
				require.NoError(t, err)
				res := r.analyse(t, d, "a.txt")
				assert.Equal(t, engine.StepDone, res.State, res.Error)
				assert.Equal(t, "vm2", res.VM)
				assert.NotContains(t, r.pool.Unusable(), "vm1", "a VM in use elsewhere stays in service")
				held.Release()
			})
			t.Run("a quarantined VM is skipped, with why, and the task runs on another", func(t *testing.T) {
				t.Parallel()
				r := newPolicyRig(t, lifecycle.NewLocalLeases(), fake.RunningAt("clean"))
				require.NoError(t, r.quarantine.Mark(context.Background(), "fake/vm1", "an operator saw its disk fail"))
				res := r.analyse(t, d, "a.txt")
				assert.Equal(t, engine.StepDone, res.State, res.Error)
				assert.Equal(t, "vm2", res.VM)
				require.Len(t, res.Skipped, 1)
				assert.Equal(t, "vm1", res.Skipped[0].VM)
				assert.Contains(t, res.Skipped[0].Reason, "an operator saw its disk fail")
				assert.Contains(t, r.pool.Unusable()["vm1"], "an operator saw its disk fail")
			})
			t.Run("a VM quarantined by a task's cleanup takes no further task", func(t *testing.T) {
				t.Parallel()
				// vm1's guest ignores the power button and the VM hangs in
				// stopping: with no emergency rung, nothing ends it.
				vm1 := fake.RunningAt("clean")
				vm1.Faults = fake.Faults{ACPIIgnored: true, StuckInStopping: true}
				r := newPolicyRig(t, lifecycle.NewLocalLeases(), vm1)
				for _, name := range []string{"vm1", "vm2"} {
					vm := r.pool.VMs()[name]
					vm.Settings.NativeCleanup = false
					vm.Settings.StopLadder = []string{config.StopACPI, config.StopPowerOff}
					r.pool.VMs()[name] = vm
				}
				first := r.analyse(t, d, "a.txt")
				second := r.analyse(t, d, "b.txt")
				var onVM1 *engine.Result
				for _, res := range []*engine.Result{first, second} {
					if res.VM == "vm1" || len(res.Skipped) > 0 {
						onVM1 = res
					}
				}
				require.NotNil(t, onVM1, "no task went to vm1: %+v %+v", first, second)
				_, q, err := r.quarantine.Get(context.Background(), "fake/vm1")
				require.NoError(t, err)
				assert.True(t, q, "vm1 is quarantined")
				assert.Contains(t, r.pool.Unusable()["vm1"], "quarantined")
				third := r.analyse(t, d, "c.txt")
				assert.Equal(t, engine.StepDone, third.State, third.Error)
				assert.Equal(t, "vm2", third.VM, "the quarantined VM takes no further task")
				assert.Empty(t, third.Skipped, "the pool knew vm1 out of service: no task tries it again")
			})
			t.Run("a VM that cannot be made ready is quarantined; the task moves on", func(t *testing.T) {
				t.Parallel()
				vm1 := fake.RunningAt("clean")
				vm1.Faults = fake.Faults{StatusFailures: 1 << 20}
				r := newPolicyRig(t, lifecycle.NewLocalLeases(), vm1)
				res := r.analyse(t, d, "a.txt")
				assert.Equal(t, engine.StepDone, res.State, res.Error)
				assert.Equal(t, "vm2", res.VM)
				require.Len(t, res.Skipped, 1)
				assert.Contains(t, res.Skipped[0].Reason, "could not be made ready")
				_, q, err := r.quarantine.Get(context.Background(), "fake/vm1")
				require.NoError(t, err)
				assert.True(t, q, "a VM that could not even be read must not serve until someone looked at it")
			})
		})
	}
}
