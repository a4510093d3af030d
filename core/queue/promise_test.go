package queue_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/core/queue/pgtest"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// Every accepted task ends exactly once: each way the issue found a task
// left running forever, tried here as an operator would meet it.

// waitTask waits until the task has ended and returns it.
func waitTask(t *testing.T, q *queue.Queue, id string, within time.Duration) *queue.Task {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		task, err := q.Task(context.Background(), id)
		require.NoError(t, err)
		if task.Final() {
			return task
		}
		require.True(t, time.Now().Before(deadline), "task %s never ended: %s, %+v", id, task.State, task.Analyses)
		time.Sleep(50 * time.Millisecond) // polling the database as a client would
	}
}

func submitOne(t *testing.T, q *queue.Queue, name, content string, req queue.Request) *queue.Task {
	t.Helper()
	task, err := q.Submit(context.Background(), name, strings.NewReader(content), req)
	require.NoError(t, err)
	return task
}

// A job that fails at its last attempt ends its analysis, failed, with
// why: the task ends, and says so.
func TestAJobFailingAtItsLastAttemptEndsTheTask(t *testing.T) {
	t.Parallel()
	databases(t, func(t *testing.T, db string) {
		h := newHost(t, "h", "vm1")
		// The host cannot write the sample out for its driver: every
		// attempt fails before an analysis could run.
		require.NoError(t, os.WriteFile(filepath.Join(h.dir, "work"), []byte("in the way"), 0o644))
		q := h.open(t, db, scanProfile(t, "vm1"), func(o *queue.Options) { o.MaxAttempts = 1 })
		start(t, q)
		task := waitTask(t, q, submitOne(t, q, "a.txt", "a", queue.Request{}).ID, time.Minute)
		assert.Equal(t, queue.StateFailed, task.State)
		require.Len(t, task.Results, 1)
		assert.Contains(t, task.Results[0].Error, "its job failed at its last attempt (1 of 1)")
		require.NotNil(t, task.Report)
		_, err := q.Cancel(context.Background(), task.ID)
		var ie *queue.InputError
		require.ErrorAs(t, err, &ie)
		assert.Equal(t, "already_finished", ie.Code, "a cancel of an ended task says so")
	})
}

// Two tasks of the same sample each have their directory: the later one
// never replaces the earlier one's report or artifacts.
func TestTwoTasksOfOneSampleKeepTheirOwnReports(t *testing.T) {
	t.Parallel()
	h := newHost(t, "h", "vm1")
	q := h.open(t, "", scanProfile(t, "vm1"))
	start(t, q)
	a := waitTask(t, q, submitOne(t, q, "same.txt", "the same bytes", queue.Request{}).ID, time.Minute)
	b := waitTask(t, q, submitOne(t, q, "same.txt", "the same bytes", queue.Request{}).ID, time.Minute)
	require.Equal(t, a.Sample.SHA256, b.Sample.SHA256)
	for _, task := range []*queue.Task{a, b} {
		rep, err := engine.ReadReport(filepath.Join(h.dir, "results", task.Sample.SHA256, task.ID, engine.ReportFile))
		require.NoError(t, err, "each task has its own report.json")
		assert.Equal(t, task.Report.Finished, rep.Finished)
	}
}

// A task's end is written once: the sweep, ending tasks whose analyses all
// ended, runs without pause beside the jobs that end them themselves, and
// every task's report.json is the report its record holds.
func TestATaskEndedByItsJobAndTheSweepAtOnceHasOneReport(t *testing.T) {
	t.Parallel()
	h := newHost(t, "h", "vm1")
	q := h.open(t, "", scanProfile(t, "vm1"))
	start(t, q)
	ctx, stop := context.WithCancel(context.Background())
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		for ctx.Err() == nil {
			_ = q.SweepEndedTasks(ctx)
		}
	}()
	var ids []string
	for i := range 8 {
		ids = append(ids, submitOne(t, q, fmt.Sprintf("s%d.txt", i), fmt.Sprint("sample ", i), queue.Request{}).ID)
	}
	var tasks []*queue.Task
	for _, id := range ids {
		tasks = append(tasks, waitTask(t, q, id, time.Minute))
	}
	stop()
	<-swept
	for _, task := range tasks {
		rep, err := engine.ReadReport(filepath.Join(h.dir, "results", task.Sample.SHA256, task.ID, engine.ReportFile))
		require.NoError(t, err)
		assert.Equal(t, task.Report.Finished, rep.Finished, "task %s: report.json is the report its record holds", task.ID)
	}
}

// A report that cannot be written leaves the task running, with nothing
// half-written and an ERROR in the log; once it can, the sweep writes it
// and ends the task.
func TestAReportThatCannotBeWrittenIsWrittenOnceItCan(t *testing.T) {
	t.Parallel()
	h := newHost(t, "h", "vm1")
	logs := &plugintest.Buffer{}
	q := h.open(t, "", scanProfile(t, "vm1"), func(o *queue.Options) {
		o.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: logs})
	})
	start(t, q)
	// The sample's directory is a file: no task directory can be made in
	// it, as on a full or read-only disk.
	content := "a sample whose report has nowhere to go"
	sampleDir := filepath.Join(h.dir, "results", sha256Hex(content))
	require.NoError(t, os.MkdirAll(filepath.Dir(sampleDir), 0o755))
	require.NoError(t, os.WriteFile(sampleDir, nil, 0o644))
	task := submitOne(t, q, "s.txt", content, queue.Request{})
	require.Eventually(t, func() bool {
		got, err := q.Task(context.Background(), task.ID)
		return err == nil && len(got.Results) == 1
	}, time.Minute, 50*time.Millisecond, "the analysis ends")
	// The attempt to end the task is awaited, not given a fixed time: on a
	// busy machine it came after 2 s.
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "cannot write a task's report")
	}, time.Minute, 50*time.Millisecond, "the failed write is logged")
	assert.Contains(t, logs.String(), "[ERROR]")
	got, err := q.Task(context.Background(), task.ID)
	require.NoError(t, err)
	assert.Equal(t, queue.StateRunning, got.State, "not done before its report exists")

	require.NoError(t, os.Remove(sampleDir)) // space back
	got = waitTask(t, q, task.ID, time.Minute)
	assert.Equal(t, queue.StateDone, got.State)
	dir := filepath.Join(sampleDir, task.ID)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{engine.ReportFile}, names, "the report, and nothing half-written beside it")
}

// A profile removed from every host's configuration while its tasks were
// queued: no job of theirs would ever run. They end failed, saying why,
// and the queue's depth counts them until they do.
func TestAProfileNoHostServesEndsItsTasks(t *testing.T) {
	t.Parallel()
	databases(t, func(t *testing.T, db string) {
		h := newHost(t, "h", "vm1", "vm2")
		both := append(scanProfile(t, "vm1"), config.NewProfile("other", []string{"vm2"}, "/s/{sha256}", "true"))
		q := h.open(t, db, both)
		task := submitOne(t, q, "a.txt", "a", queue.Request{Profiles: []string{"scan"}})
		q.Close() // accepted, never worked

		q = h.open(t, db, both[1:]) // "scan" is gone from the configuration
		depth, err := q.Depth(context.Background())
		require.NoError(t, err)
		assert.Equal(t, 1, depth["scan"], "the queue's depth counts what no host serves")
		start(t, q)
		got := waitTask(t, q, task.ID, time.Minute)
		assert.Equal(t, queue.StateFailed, got.State)
		require.Len(t, got.Results, 1)
		assert.Contains(t, got.Results[0].Error, "no host serves profile scan any more")
		depth, err = q.Depth(context.Background())
		require.NoError(t, err)
		assert.Zero(t, depth["scan"])
	})
}

// A host that dies and never comes back: another host takes its running
// analysis over within dead_after and a sweep, the analysis records the
// attempt it lost, and the task ends once.
func TestADeadHostsAnalysisIsTakenOverWithinSeconds(t *testing.T) {
	t.Parallel()
	db := pgtest.Database(t)
	a := newHost(t, "host-a", "a1")
	b := newHost(t, "host-b", "b1")
	profiles := sleepProfile(t, "2", "a1", "b1")
	qa := a.open(t, db, profiles)
	require.NoError(t, qa.Start(context.Background()))
	task := submitOne(t, qa, "s.txt", "s", queue.Request{})
	require.Eventually(t, func() bool {
		got, err := qa.Task(context.Background(), task.ID)
		return err == nil && got.Analyses[0].State == queue.StateRunning && got.Analyses[0].Host == "host-a"
	}, time.Minute, 20*time.Millisecond)
	// host-a dies: no Stop, no more heartbeats, its job never ends.
	qa.Kill()
	died := time.Now()

	qb := b.open(t, db, profiles)
	start(t, qb)
	got := waitTask(t, qb, task.ID, 2*time.Minute)
	took := time.Since(died)
	assert.Equal(t, queue.StateDone, got.State)
	require.Len(t, got.Results, 1)
	assert.Equal(t, "host-b", got.Results[0].Host)
	require.Len(t, got.Analyses[0].Lost, 1, "the lost attempt is recorded")
	assert.Equal(t, "host-a", got.Analyses[0].Lost[0].Host)
	assert.Contains(t, got.Analyses[0].Lost[0].Why, "last heartbeat")
	assert.Equal(t, 2, got.Analyses[0].Attempt)
	t.Logf("from host-a's death to the task's end on host-b: %s (dead_after %s)", took.Round(100*time.Millisecond), config.MinDeadAfter)
	hosts, err := qb.Hosts(context.Background())
	require.NoError(t, err)
	require.Len(t, hosts, 2)
	assert.False(t, hosts[0].Alive, "host-a is dead")
	assert.True(t, hosts[1].Alive)
}

// A host that dies as River hands it a job, before the job claims its
// analysis: River thinks the job running, the analysis still waits for it.
// Another host takes the analysis over, and nothing is recorded lost, for
// nothing had begun.
func TestAHostDyingBeforeItsJobBeginsLosesNothing(t *testing.T) {
	t.Parallel()
	db := pgtest.Database(t)
	a := newHost(t, "host-a", "a1")
	b := newHost(t, "host-b", "b1")
	profiles := scanProfile(t, "a1", "b1")
	qa := a.open(t, db, profiles)
	qa.DieBeforeClaim()
	require.NoError(t, qa.Start(context.Background()))
	task := submitOne(t, qa, "s.txt", "s", queue.Request{})
	time.Sleep(time.Second) // host-a's River takes the job, and host-a dies with it

	qb := b.open(t, db, profiles)
	start(t, qb)
	got := waitTask(t, qb, task.ID, 2*time.Minute)
	assert.Equal(t, queue.StateDone, got.State)
	require.Len(t, got.Results, 1)
	assert.Equal(t, "host-b", got.Results[0].Host)
	assert.Empty(t, got.Analyses[0].Lost, "no attempt had begun, none was lost")
	assert.Equal(t, 1, got.Analyses[0].Attempt)
}

// The SQLite file deleted under the service: the service stops taking
// work and says why, instead of accepting tasks into a file that is gone.
func TestADeletedDatabaseFileStopsTheService(t *testing.T) {
	t.Parallel()
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	h := newHost(t, "h", "vm1")
	q := h.open(t, "", scanProfile(t, "vm1"))
	start(t, q)
	waitTask(t, q, submitOne(t, q, "a.txt", "a", queue.Request{}).ID, time.Minute)
	for _, f := range []string{"queue.db", "queue.db-wal", "queue.db-shm"} {
		fi, err := os.Stat(filepath.Join(h.dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "%s is its owner's alone, whatever the umask", f)
	}
	require.NoError(t, q.Ping(context.Background()))

	require.NoError(t, os.Remove(filepath.Join(h.dir, "queue.db")))
	require.Eventually(t, func() bool { return q.Ping(context.Background()) != nil }, 10*time.Second, 50*time.Millisecond,
		"readiness fails once the file is gone")
	err := q.Ping(context.Background())
	require.ErrorIs(t, err, queue.ErrDatabaseLost)
	assert.Contains(t, err.Error(), "restart the service")
	_, err = q.Submit(context.Background(), "b.txt", strings.NewReader("b"), queue.Request{})
	require.ErrorIs(t, err, queue.ErrDatabaseLost, "no task is accepted into a lost file")
}

// A database made by the queue before its tables were versioned is
// upgraded in place: ended tasks keep their reports, a half-ended task
// keeps its result and runs what is left, a queued one runs.
func TestADatabaseFromBeforeMigrationsIsUpgraded(t *testing.T) {
	t.Parallel()
	h := newHost(t, "new-host", "vm1", "vm2")
	data, err := os.ReadFile(filepath.Join("testdata", "queue-before-migrations.db"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h.dir, "queue.db"), data, 0o600))
	profiles := append(scanProfile(t, "vm1"), config.NewProfile("other", []string{"vm2"}, "/s/{sha256}", "true"))
	q := h.open(t, "", profiles)
	assert.Equal(t, queue.Schema(), q.Schema())
	start(t, q)
	tasks, err := q.Tasks(context.Background(), "", 10)
	require.NoError(t, err)
	require.Len(t, tasks, 3)
	for _, listed := range tasks {
		got := waitTask(t, q, listed.ID, time.Minute)
		assert.Equal(t, queue.StateDone, got.State, "%s", got.Sample.Name)
		require.NotNil(t, got.Report)
		switch got.Sample.Name {
		case "done.txt":
			assert.Equal(t, []string{"scan", "other"}, got.Profiles, "the profiles keep their order")
			assert.Equal(t, "old-host", got.Results[0].Host, "the result recorded before the upgrade stands")
		case "half.txt":
			assert.Equal(t, engine.VerdictMalicious, got.Report.Verdict, "the result recorded before the upgrade stands")
			assert.Equal(t, "new-host", got.Results[1].Host, "what was left ran after it")
		}
	}
}

// The same upgrade on PostgreSQL, from the schema of before migrations
// written by hand.
func TestAPostgreSQLDatabaseFromBeforeMigrationsIsUpgraded(t *testing.T) {
	t.Parallel()
	url := pgtest.Database(t)
	conn, err := sql.Open("pgx", url)
	require.NoError(t, err)
	defer conn.Close()
	baseline, err := os.ReadFile(filepath.Join("migrations", "postgres", "00001_baseline.sql"))
	require.NoError(t, err)
	up := strings.Split(strings.Split(string(baseline), "-- +goose Up")[1], "-- +goose Down")[0]
	_, err = conn.Exec(up)
	require.NoError(t, err)
	result, _ := json.Marshal(engine.Result{Profile: "scan", VM: "vm1", State: engine.StepDone, Verdict: engine.VerdictClean})
	for _, stmt := range []string{
		`INSERT INTO sandbox_sample (sha256, size, data) VALUES ('` + sha256Hex("x") + `', 1, 'x')`,
		`INSERT INTO sandbox_task (id, sha256, name, profiles, priority, state, jobs, created_ns) VALUES
			('t1', '` + sha256Hex("x") + `', 'x.txt', '["scan","other"]', 2, 'running', '[101,102]', 1)`,
		`INSERT INTO sandbox_result (task_id, profile, host, result) VALUES ('t1', 'scan', 'old', '` + string(result) + `')`,
	} {
		_, err := conn.Exec(stmt)
		require.NoError(t, err, stmt)
	}
	h := newHost(t, "new-host", "vm1", "vm2")
	profiles := append(scanProfile(t, "vm1"), config.NewProfile("other", []string{"vm2"}, "/s/{sha256}", "true"))
	q := h.open(t, url, profiles)
	start(t, q)
	got := waitTask(t, q, "t1", time.Minute)
	assert.Equal(t, queue.StateDone, got.State)
	assert.Equal(t, []string{"scan", "other"}, got.Profiles)
	assert.Equal(t, "old", got.Results[0].Host)
	assert.Equal(t, "new-host", got.Results[1].Host)
}

// PostgreSQL away while analyses end: the results are recorded once it is
// back, each task ends exactly once, and nothing is left running.
func TestTheDatabaseAwayWhileAnalysesEnd(t *testing.T) {
	t.Parallel()
	url := pgtest.Database(t)
	proxy := pgtest.NewProxy(t, url)
	h := newHost(t, "h", "vm1", "vm2")
	q := h.open(t, proxy.URL, sleepProfile(t, "2", "vm1", "vm2"))
	start(t, q)
	var ids []string
	for i := range 4 {
		ids = append(ids, submitOne(t, q, fmt.Sprintf("s%d.txt", i), fmt.Sprint(i), queue.Request{}).ID)
	}
	require.Eventually(t, func() bool {
		n := 0
		for _, id := range ids {
			if got, err := q.Task(context.Background(), id); err == nil && got.State == queue.StateRunning {
				n++
			}
		}
		return n == 2
	}, time.Minute, 20*time.Millisecond, "two analyses run")
	proxy.Down(8 * time.Second) // the two analyses end while it is away
	for _, id := range ids {
		got := waitTask(t, q, id, 2*time.Minute)
		assert.Equal(t, queue.StateDone, got.State, "%s: %+v", id, got.Results)
		require.Len(t, got.Results, 1, "one result: the analysis ended once")
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
