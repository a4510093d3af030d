package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
)

// BenchmarkServiceAgainstRun runs the same M analyses on the same N fake
// VMs twice: through the engine at once, as `sandbox run` does, and through
// the durable queue, as `sandbox serve` does (submitted all at once, then
// waited for). It reports the service's wall time as a ratio of run's.
func BenchmarkServiceAgainstRun(b *testing.B) {
	const m, n = 16, 4
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("vm%d", i+1))
	}
	var ratio, runSecs, serveSecs float64
	for b.Loop() {
		// Through the engine, as sandbox run.
		h := newHost(b, "run", names...)
		profiles := sleepProfile(b, "1", names...)
		var samples []engine.Sample
		for i := range m {
			p := filepath.Join(b.TempDir(), fmt.Sprintf("s%d", i))
			require.NoError(b, os.WriteFile(p, fmt.Appendf(nil, "sample %d", i), 0o644))
			s, err := engine.OpenSample(p)
			require.NoError(b, err)
			samples = append(samples, s)
		}
		pool := h.pool(b, lifecycle.New(lifecycle.Options{}), 0, profiles) // max_starting as the service has it
		sum, err := pool.RunBatch(context.Background(), engine.Batch{Samples: samples, Profiles: []string{"scan"}, OutDir: b.TempDir()})
		require.NoError(b, err)
		require.Zero(b, sum.Failed())
		run := sum.Duration

		// Through the queue, as sandbox serve.
		h = newHost(b, "serve", names...)
		q := h.open(b, "", sleepProfile(b, "1", names...))
		require.NoError(b, q.Start(context.Background()))
		begun := time.Now()
		var ids []string
		for i := range m {
			task, err := q.Submit(context.Background(), fmt.Sprintf("s%d", i), bytes.NewReader(fmt.Appendf(nil, "sample %d", i)), queue.Request{})
			require.NoError(b, err)
			ids = append(ids, task.ID)
		}
		for {
			counts, err := q.Counts(context.Background())
			require.NoError(b, err)
			if counts["done"] == len(ids) {
				break
			}
			require.Zero(b, counts["failed"])
			time.Sleep(20 * time.Millisecond) // polling the queue as an API client would
		}
		serve := time.Since(begun)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		require.NoError(b, q.Stop(ctx))
		cancel()
		q.Close()
		ratio, runSecs, serveSecs = serve.Seconds()/run.Seconds(), run.Seconds(), serve.Seconds()
	}
	b.ReportMetric(ratio, "x-run")
	b.ReportMetric(runSecs, "run-s")
	b.ReportMetric(serveSecs, "serve-s")
}
