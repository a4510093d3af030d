package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
)

// The two front doors of the one runner: `sandbox run` hands the pool an
// in-memory batch, `sandbox serve` hands it River jobs. The tests that
// say how a task and its VM end run every case through both, from one
// table, and expect the same.

// door runs one sample with the pool's one profile, as a front door does,
// and returns the task's result and the directory its report.json went
// to. cancel, called from an event subscriber, interrupts the task the
// way that door's user would (Ctrl-C; a cancel through the API).
type door struct {
	name string
	run  func(t *testing.T, ctx context.Context, pool *engine.Pool, m *lifecycle.Manager, dir string, s engine.Sample,
		cancel func(func())) (*engine.Result, string)
}

var doors = []door{
	{"run", runDoor},
	{"serve", serveDoor},
}

// runDoor is `sandbox run`: a batch of one task.
func runDoor(t *testing.T, ctx context.Context, pool *engine.Pool, _ *lifecycle.Manager, dir string, s engine.Sample,
	cancel func(func())) (*engine.Result, string) {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	cancel(stop)
	out := filepath.Join(dir, "out")
	profile := onlyProfile(t, pool)
	sum, err := pool.RunBatch(ctx, engine.Batch{Samples: []engine.Sample{s}, Profiles: []string{profile}, OutDir: out})
	require.NoError(t, err)
	return sum.Reports[0].Results[0], filepath.Join(out, s.SHA256)
}

// serveDoor is `sandbox serve`: the sample submitted to a queue on its own
// SQLite file, worked by the River worker, waited for as a client would.
// A job that no VM can run is not tried again, so that the task ends at
// once, as its last attempt would.
func serveDoor(t *testing.T, ctx context.Context, pool *engine.Pool, m *lifecycle.Manager, dir string, s engine.Sample,
	cancel func(func())) (*engine.Result, string) {
	out := filepath.Join(dir, "out")
	useMigrated(t, dir)
	q, err := queue.Open(ctx, queue.Options{StateDir: dir, Host: "h", Pool: pool, Lifecycle: m, OutDir: out, MaxAttempts: 1})
	require.NoError(t, err)
	defer q.Close()
	data, err := os.ReadFile(s.Path)
	require.NoError(t, err)
	task, err := q.Submit(ctx, s.Name, bytes.NewReader(data), queue.Request{})
	require.NoError(t, err)
	var cancels sync.WaitGroup
	defer cancels.Wait() // before the queue closes
	cancel(func() {
		// Not on the publisher's goroutine: the cancel writes to the
		// database, which the worker may need to go on.
		cancels.Go(func() {
			if _, err := q.Cancel(context.WithoutCancel(ctx), task.ID); err != nil && !isFinished(err) {
				t.Errorf("cancel: %v", err)
			}
		})
	})
	require.NoError(t, q.Start(ctx))
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, q.Stop(sctx))
	}()
	for {
		got, err := q.Task(ctx, task.ID)
		require.NoError(t, err)
		if got.Final() {
			require.Len(t, got.Results, 1)
			return got.Results[0].Result, filepath.Join(out, s.SHA256, task.ID)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("task %s never ended: %s", task.ID, got.State)
		case <-time.After(50 * time.Millisecond): // polling as an API client does
		}
	}
}

func isFinished(err error) bool {
	var ie *queue.InputError
	return errors.As(err, &ie) && ie.Code == "already_finished"
}

func onlyProfile(t *testing.T, pool *engine.Pool) string {
	t.Helper()
	require.Len(t, pool.Profiles(), 1)
	for name := range pool.Profiles() {
		return name
	}
	return ""
}

// sampleFile writes a sample and opens it.
func sampleFile(t *testing.T, name, content string) engine.Sample {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	s, err := engine.OpenSample(p)
	require.NoError(t, err)
	return s
}

// cellProfile is the fake guest's scanner with its log as an artifact and
// deadlines short enough for a fault to end a task soon.
func cellProfile(vms ...string) config.Profile {
	p := config.NewProfile("scan", vms, "/s/{name}", "scan", "-o", "/s/log", "{sample}")
	p.ReadyCommand, p.Artifacts = []string{"true"}, []string{"/s/log"}
	p.ReadyTimeout, p.CopyTimeout, p.Timeout = 2*time.Second, 2*time.Second, 5*time.Second
	return p
}

// cellLifecycle is the lifecycle settings of a cell's VM: deadlines short
// enough for a fault to end a task soon, long enough for a busy machine.
func cellLifecycle() config.Lifecycle {
	s := config.DefaultLifecycle()
	s.Snapshot = "clean"
	s.ACPITimeout, s.PowerOffTimeout, s.EmergencyTimeout = 400*time.Millisecond, 400*time.Millisecond, 2*time.Second
	s.ReleaseTimeout, s.UnlockTimeout = time.Second, 2*time.Second
	s.RestoreTimeout, s.StartTimeout, s.CleanupTimeout, s.StatusTimeout = 3*time.Second, 3*time.Second, 15*time.Second, 3*time.Second
	return s
}

func vmNames(n int) []string {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("vm%d", i+1)
	}
	return names
}
