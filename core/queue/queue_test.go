package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/core/queue/pgtest"
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
)

// host is one hypervisor host: its fake hypervisor with its VMs, and its
// queue on the shared (or its own) database.
type host struct {
	name   string
	driver *sdk.InProcess
	vms    map[string]lifecycle.VM
	dir    string
}

func newHost(t testing.TB, name string, vms ...string) *host {
	t.Helper()
	dir := t.TempDir()
	world := fake.Config{StateDir: "world", Timing: fake.FastTiming(), VMs: map[string]fake.VMConfig{}}
	for _, vm := range vms {
		world.VMs[vm] = fake.VMConfig{Snapshots: []string{"clean"}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := sdk.ServeInProcess(ctx, fake.New, sdk.ConfigFromTOML("fake", filepath.Join(dir, "config.toml"), []byte(world.TOML("fake"))), nil)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	s := config.DefaultLifecycle()
	s.Snapshot = "clean"
	h := &host{name: name, driver: d, vms: map[string]lifecycle.VM{}, dir: dir}
	for _, vm := range vms {
		h.vms[vm] = lifecycle.VM{Name: vm, Plugin: "fake", Driver: d, Settings: s}
	}
	return h
}

func scanProfile(t testing.TB, vms ...string) []config.Profile {
	t.Helper()
	return sleepProfile(t, "0.3", vms...)
}

// sleepProfile is an analysis that takes secs seconds on the VMs.
func sleepProfile(t testing.TB, secs string, vms ...string) []config.Profile {
	t.Helper()
	return []config.Profile{config.NewProfile("scan", vms, "/s/{sha256}", "sleep", secs)}
}

// pool is the host's VMs as one engine's pool, for profiles.
func (h *host) pool(t testing.TB, m *lifecycle.Manager, maxStarting int, profiles []config.Profile) *engine.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := engine.New(engine.Options{Lifecycle: m, MaxStarting: maxStarting, Events: engine.NewEvents()})
	p, err := engine.NewPool(ctx, e, slices.Collect(maps.Values(h.vms)), profiles)
	require.NoError(t, err)
	return p
}

// open opens the host's queue on database ("" for its own SQLite file),
// with dead_after at its minimum unless edit says otherwise.
func (h *host) open(t testing.TB, database string, profiles []config.Profile, edit ...func(*queue.Options)) *queue.Queue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := lifecycle.New(lifecycle.Options{})
	opts := queue.Options{Database: database, StateDir: h.dir, Host: h.name, Pool: h.pool(t, m, 0, profiles), Lifecycle: m,
		OutDir: filepath.Join(h.dir, "results"), DeadAfter: config.MinDeadAfter}
	for _, f := range edit {
		f(&opts)
	}
	if opts.Database == "" {
		useMigrated(t, h.dir)
	}
	q, err := queue.Open(ctx, opts)
	require.NoError(t, err)
	return q
}

// databases runs f with each database the queue supports: its own
// SQLite file, and a fresh PostgreSQL database (skipped, saying why,
// where none can be had).
func databases(t *testing.T, f func(t *testing.T, database string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, "") })
	t.Run("postgres", func(t *testing.T) { f(t, pgtest.Database(t)) })
}

func start(t *testing.T, q *queue.Queue) {
	t.Helper()
	require.NoError(t, q.Start(context.Background()))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		assert.NoError(t, q.Stop(ctx))
		q.Close()
	})
}

// waitAll waits until every task has ended.
func waitAll(t *testing.T, q *queue.Queue, ids []string) []*queue.Task {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var out []*queue.Task
		for _, id := range ids {
			task, err := q.Task(context.Background(), id)
			require.NoError(t, err)
			if task.Final() {
				out = append(out, task)
			}
		}
		if len(out) == len(ids) {
			return out
		}
		require.True(t, time.Now().Before(deadline), "%d of %d tasks ended", len(out), len(ids))
		time.Sleep(50 * time.Millisecond) // polling the database as a client would
	}
}

func submit(t *testing.T, q *queue.Queue, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		task, err := q.Submit(context.Background(), fmt.Sprintf("s%d.txt", i), bytes.NewReader(fmt.Appendf(nil, "sample %d", i)), queue.Request{})
		require.NoError(t, err)
		ids = append(ids, task.ID)
	}
	return ids
}

func TestTasksSpreadOverHostsSharingPostgreSQL(t *testing.T) {
	t.Parallel()
	db := pgtest.Database(t)
	a := newHost(t, "host-a", "a1", "a2")
	b := newHost(t, "host-b", "b1", "b2")
	profiles := scanProfile(t, "a1", "a2", "b1", "b2")
	qa := a.open(t, db, profiles)
	qb := b.open(t, db, profiles)
	start(t, qa)
	start(t, qb)
	ids := submit(t, qa, 12)
	hosts := map[string]int{}
	for _, task := range waitAll(t, qb, ids) {
		assert.Equal(t, queue.StateDone, task.State)
		require.Len(t, task.Results, 1)
		hosts[task.Results[0].Host]++
		vm := task.Results[0].VM
		assert.True(t, strings.HasPrefix(vm, strings.TrimPrefix(task.Results[0].Host, "host-")), "%s ran on %s", task.Results[0].Host, vm)
	}
	assert.Len(t, hosts, 2, "both hosts worked: %v", hosts)
}

func TestAcceptedTasksOutliveTheProcess(t *testing.T) {
	t.Parallel()
	h := newHost(t, "solo", "vm1")
	profiles := scanProfile(t, "vm1")
	q := h.open(t, "", profiles)
	ids := submit(t, q, 3)
	depth, err := q.Depth(context.Background())
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"scan": 3}, depth)
	q.Close() // accepted, never worked

	q = h.open(t, "", profiles)
	start(t, q)
	for _, task := range waitAll(t, q, ids) {
		assert.Equal(t, queue.StateDone, task.State)
		assert.Equal(t, engine.VerdictClean, task.Verdict)
		require.NotNil(t, task.Report)
	}
	depth, err = q.Depth(context.Background())
	require.NoError(t, err)
	assert.Zero(t, depth["scan"])
}

// Cleanups and reconciliations of one VM asked at once (the one a start
// begins, an operator's through the API) take turns: each ends, none is
// refused because another of this process holds the VM.
func TestMaintenanceOfOneVMTakesTurns(t *testing.T) {
	t.Parallel()
	h := newHost(t, "a", "vm1")
	ctx := context.Background()
	require.NoError(t, h.driver.Start(ctx, "vm1"))
	q := h.open(t, "", scanProfile(t, "vm1"))
	t.Cleanup(q.Close)
	const calls = 4
	reports := make([]*lifecycle.OpReport, calls)
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() { reports[i], errs[i] = q.Reconcile(ctx, "vm1") })
	}
	wg.Wait()
	reconciled := 0
	for i := range calls {
		require.NoError(t, errs[i], "call %d", i)
		if reports[i].Reconciled {
			reconciled++
		}
	}
	assert.Equal(t, 1, reconciled, "the first cleans the VM left running, the others find it clean")
	st, err := h.driver.Status(ctx, "vm1")
	require.NoError(t, err)
	assert.True(t, st.Power.IsOff())
}
