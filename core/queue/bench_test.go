package queue_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/core/queue/pgtest"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
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

// BenchmarkSubmitLatency submits samples from 50 concurrent clients to the
// queue on each database and reports the latency of a submission (the
// sample stored, the task, its analyses and its job committed) at p50 and
// p99, beside the same percentiles of a bare database round trip under the
// same load, measured in the same run.
func BenchmarkSubmitLatency(b *testing.B) {
	for _, db := range []struct{ name, url string }{{"sqlite", ""}, {"postgres", ""}} {
		b.Run(db.name, func(b *testing.B) {
			url := db.url
			if db.name == "postgres" {
				url = pgtest.Database(b)
			}
			h := newHost(b, "bench", "vm1")
			q := h.open(b, url, scanProfile(b, "vm1"))
			defer q.Close() // not started: nothing runs, the submissions only queue
			const clients, each = 50, 4
			measure := func(do func(i int) error) []time.Duration { return plugintest.Latencies(b, clients, each, do) }
			var sub, ping []time.Duration
			measure(func(int) error { return q.Ping(context.Background()) }) // the connections opened once
			for b.Loop() {
				ping = measure(func(int) error { return q.Ping(context.Background()) })
				sub = measure(func(i int) error {
					_, err := q.Submit(context.Background(), fmt.Sprintf("s%d", i),
						bytes.NewReader(fmt.Appendf(nil, "sample %d %d", i, time.Now().UnixNano())), queue.Request{})
					return err
				})
			}
			b.ReportMetric(plugintest.PercentileMS(sub, .5), "submit-p50-ms")
			b.ReportMetric(plugintest.PercentileMS(sub, .99), "submit-p99-ms")
			b.ReportMetric(plugintest.PercentileMS(ping, .5), "ping-p50-ms")
			b.ReportMetric(plugintest.PercentileMS(ping, .99), "ping-p99-ms")
		})
	}
}

// BenchmarkPickup reports how long a task waits between its submission and
// its analysis's preparing step on an idle host, on each database.
func BenchmarkPickup(b *testing.B) {
	for _, name := range []string{"sqlite", "postgres"} {
		b.Run(name, func(b *testing.B) {
			url := ""
			if name == "postgres" {
				url = pgtest.Database(b)
			}
			h := newHost(b, "bench", "vm1")
			q := h.open(b, url, sleepProfile(b, "0", "vm1"))
			pool := q.Pool()
			preparing := make(chan time.Time, 1)
			defer pool.Events().Subscribe(func(e engine.Event) {
				if e.Step == engine.StepPreparing {
					preparing <- e.At
				}
			})()
			require.NoError(b, q.Start(context.Background()))
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				require.NoError(b, q.Stop(ctx))
				q.Close()
			}()
			var waits []time.Duration
			for b.Loop() {
				task, err := q.Submit(context.Background(), "s", bytes.NewReader(fmt.Appendf(nil, "%d", time.Now().UnixNano())), queue.Request{})
				require.NoError(b, err)
				submitted := time.Now()
				waits = append(waits, (<-preparing).Sub(submitted))
				for {
					got, err := q.Task(context.Background(), task.ID)
					require.NoError(b, err)
					if got.Final() {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			slices.Sort(waits)
			b.ReportMetric(plugintest.PercentileMS(waits, .5), "pickup-p50-ms")
			b.ReportMetric(plugintest.PercentileMS(waits, .99), "pickup-p99-ms")
		})
	}
}

// noop is a job that does nothing, for timing River's own pickup.
type noop struct{}

func (noop) Kind() string { return "bench.noop" }

type noopWorker struct {
	river.WorkerDefaults[noop]
	picked chan time.Time
}

func (w *noopWorker) Work(context.Context, *river.Job[noop]) error {
	w.picked <- time.Now()
	return nil
}

// BenchmarkPickupWithoutListenNotify is what the queue gives up on
// PostgreSQL by reaching it through database/sql (riverdatabasesql, which
// has no LISTEN/NOTIFY and polls) so that both databases share one
// transaction type: River's pickup of a job inserted into an idle queue
// with the queue's own poll interval, through that driver and through
// pgx's own (riverpgxv5, woken by NOTIFY), in the same run.
func BenchmarkPickupWithoutListenNotify(b *testing.B) {
	url := pgtest.Database(b)
	ctx := context.Background()
	run := func(b *testing.B, insert func(ctx context.Context) error, start, stop func(), picked chan time.Time) []time.Duration {
		start()
		defer stop()
		var waits []time.Duration
		for range 20 {
			begun := time.Now()
			require.NoError(b, insert(ctx))
			waits = append(waits, (<-picked).Sub(begun))
		}
		slices.Sort(waits)
		return waits
	}
	var sqlWaits, pgxWaits []time.Duration
	for b.Loop() {
		// database/sql, polling.
		{
			db, err := sql.Open("pgx", url)
			require.NoError(b, err)
			driver := riverdatabasesql.New(db)
			m, err := rivermigrate.New(driver, nil)
			require.NoError(b, err)
			_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
			require.NoError(b, err)
			w := &noopWorker{picked: make(chan time.Time, 1)}
			workers := river.NewWorkers()
			river.AddWorker(workers, w)
			c, err := river.NewClient(driver, &river.Config{Queues: map[string]river.QueueConfig{"q": {MaxWorkers: 1,
				FetchPollInterval: 50 * time.Millisecond}}, Workers: workers, FetchCooldown: 10 * time.Millisecond,
				Logger: slog.New(slog.DiscardHandler)})
			require.NoError(b, err)
			sqlWaits = run(b, func(ctx context.Context) error {
				_, err := c.Insert(ctx, noop{}, &river.InsertOpts{Queue: "q"})
				return err
			}, func() { require.NoError(b, c.Start(ctx)) }, func() { _ = c.Stop(ctx); db.Close() }, w.picked)
		}
		// pgx, with LISTEN/NOTIFY.
		{
			pool, err := pgxpool.New(ctx, url)
			require.NoError(b, err)
			driver := riverpgxv5.New(pool)
			w := &noopWorker{picked: make(chan time.Time, 1)}
			workers := river.NewWorkers()
			river.AddWorker(workers, w)
			c, err := river.NewClient(driver, &river.Config{Queues: map[string]river.QueueConfig{"q": {MaxWorkers: 1,
				FetchPollInterval: 50 * time.Millisecond}}, Workers: workers, FetchCooldown: 10 * time.Millisecond,
				Logger: slog.New(slog.DiscardHandler)})
			require.NoError(b, err)
			pgxWaits = run(b, func(ctx context.Context) error {
				_, err := c.Insert(ctx, noop{}, &river.InsertOpts{Queue: "q"})
				return err
			}, func() { require.NoError(b, c.Start(ctx)) }, func() { _ = c.Stop(ctx); pool.Close() }, w.picked)
		}
	}
	b.ReportMetric(plugintest.PercentileMS(sqlWaits, .5), "databasesql-p50-ms")
	b.ReportMetric(plugintest.PercentileMS(sqlWaits, .99), "databasesql-p99-ms")
	b.ReportMetric(plugintest.PercentileMS(pgxWaits, .5), "pgx-notify-p50-ms")
	b.ReportMetric(plugintest.PercentileMS(pgxWaits, .99), "pgx-notify-p99-ms")
}
