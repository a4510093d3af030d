// Package queue is the durable task queue of `sandbox serve`: tasks
// submitted to it survive a restart of the service or of the host, and
// several hosts can share it. River (github.com/riverqueue/river) keeps
// the jobs, one per (task, profile), with retries, rescue of jobs whose
// worker died, uniqueness and cancellation; the queue adds the samples,
// the tasks and their results, and the workers, which run each job
// through the analysis engine on a VM of this host.
//
// One host keeps everything in an embedded SQLite file; many hosts share a
// PostgreSQL database. Each host works only the jobs of the profiles whose
// VMs it has: every profile is a River queue, which a host subscribes to
// with as many workers as it has VMs in the profile, so a task runs
// wherever such a VM is free, and when a host dies the others rescue its
// jobs.
package queue

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	_ "modernc.org/sqlite" // the embedded database, pure Go

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// Options configures a Queue.
type Options struct {
	// Database is a PostgreSQL URL (postgres://...) shared by every host,
	// or empty for an SQLite file in StateDir that this host alone uses.
	Database string
	// StateDir holds the SQLite file and the local copies of samples.
	StateDir string
	// Host names this host among those sharing the database; it must be
	// unique among them and the same across restarts.
	Host string
	// Pool is this host's VMs and every profile of the configuration: it
	// runs each job's analysis.
	Pool *engine.Pool
	// Lifecycle runs the operators' cleanups and reconciliations.
	Lifecycle *lifecycle.Manager
	// OutDir receives the artifacts and the reports of the tasks this
	// host ends, each task in OutDir/SHA256/TASK-ID.
	OutDir string
	// RescueAfter is how long a job may run on a host that stopped
	// answering before another host takes it over; a job is never taken
	// over before its own deadline (engine.Bound) has passed either.
	RescueAfter time.Duration
	// MaxAttempts bounds how often a job is tried when no VM could run it.
	MaxAttempts int
	// Logger receives the queue's and River's log.
	Logger hclog.Logger
	// OnResult is told every analysis this host records, as it is
	// recorded.
	OnResult func(*engine.Result)
}

// jobClient is what the queue uses of a River client, whatever its
// database driver.
type jobClient interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	StopAndCancel(ctx context.Context) error
	InsertMany(ctx context.Context, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error)
	JobCancel(ctx context.Context, id int64) (*rivertype.JobRow, error)
	JobList(ctx context.Context, params *river.JobListParams) (*river.JobListResult, error)
}

// Queue is the durable queue of one host.
type Queue struct {
	opts   Options
	log    hclog.Logger
	store  *store
	client jobClient
	exec   riverdriver.Executor
	pool   *engine.Pool
	// queues maps each River queue this host works to its worker count.
	queues map[string]int
	close  []func()

	mu sync.Mutex
	// working holds the task and the cancel function of each job this host
	// runs, by job
	// id, so that a cancellation through this host's API takes effect at
	// once rather than when River's notice arrives.
	working map[int64]running
}

// running is a job under way on this host.
type running struct {
	task   string
	cancel context.CancelCauseFunc
}

// analysisArgs is one job: one task's analysis with one profile.
type analysisArgs struct {
	Task    string `json:"task" river:"unique"`
	Profile string `json:"profile" river:"unique"`
}

func (analysisArgs) Kind() string { return "sandbox.analysis" }

// Open connects to the database, creates or upgrades the tables, puts
// back the jobs this host was running when it last died, and prepares the
// workers. Start begins working.
func Open(ctx context.Context, opts Options) (*Queue, error) {
	if opts.Host == "" {
		return nil, errors.New("queue: a host name is needed")
	}
	if opts.Pool == nil || opts.Lifecycle == nil {
		return nil, errors.New("queue: a pool and a lifecycle manager are needed")
	}
	if opts.RescueAfter <= 0 {
		opts.RescueAfter = config.DefaultRescueAfter
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = config.DefaultMaxAttempts
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	q := &Queue{opts: opts, log: opts.Logger, pool: opts.Pool, working: map[int64]running{}}
	var err error
	if q.queues, err = q.workQueues(); err != nil {
		return nil, err
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &worker{q: q})
	queues := map[string]river.QueueConfig{}
	for name, n := range q.queues {
		// A profile's queue is looked at often, so that a task starts soon
		// after a VM is free; a VM's own queue (tasks pinned to it, rare)
		// seldom, so that hundreds of VMs do not poll the database.
		poll := 50 * time.Millisecond
		if strings.HasPrefix(name, "vm-") {
			poll = 2 * time.Second
		}
		queues[name] = river.QueueConfig{MaxWorkers: n, FetchPollInterval: poll}
	}
	cfg := &river.Config{
		ID:                   opts.Host,
		Queues:               queues,
		Workers:              workers,
		JobTimeout:           -1, // each job's own deadline: worker.Timeout
		RescueStuckJobsAfter: opts.RescueAfter,
		MaxAttempts:          opts.MaxAttempts,
		FetchCooldown:        10 * time.Millisecond,
		FetchPollInterval:    2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(opts.Logger.Named("river").StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true}),
			&slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if len(queues) == 0 {
		cfg.Queues, cfg.Workers = nil, nil // insert-only: this host has no VM
	}
	if err := q.connect(ctx, cfg); err != nil {
		q.Close()
		return nil, err
	}
	if err := q.store.migrate(ctx); err != nil {
		q.Close()
		return nil, err
	}
	if err := q.reclaim(ctx); err != nil {
		q.Close()
		return nil, err
	}
	if err := q.repair(ctx); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// connect opens the database and a River client on it, and migrates
// River's tables.
func (q *Queue) connect(ctx context.Context, cfg *river.Config) error {
	if strings.HasPrefix(q.opts.Database, "postgres://") || strings.HasPrefix(q.opts.Database, "postgresql://") {
		pool, err := pgxpool.New(ctx, q.opts.Database)
		if err == nil {
			err = pool.Ping(ctx)
		}
		if err != nil {
			if pool != nil {
				pool.Close()
			}
			return fmt.Errorf("database %s: %w (is PostgreSQL running, and the URL's user, password and database right?)",
				redact(q.opts.Database), err)
		}
		q.close = append(q.close, pool.Close)
		db := stdlib.OpenDBFromPool(pool)
		q.close = append(q.close, func() { db.Close() })
		q.store = &store{db: db, dialect: dialectPostgres}
		return startClient(ctx, q, riverpgxv5.New(pool), cfg)
	}
	if q.opts.Database != "" {
		return fmt.Errorf("database %q: want a postgres:// URL, or nothing for the embedded SQLite file", redact(q.opts.Database))
	}
	path := filepath.Join(q.opts.StateDir, "queue.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return fmt.Errorf("queue database %s: %w", path, err)
	}
	// SQLite runs one writer at a time; one connection serializes River's
	// and the queue's statements instead of failing them with SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	q.close = append(q.close, func() { db.Close() })
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("queue database %s: %w", path, err)
	}
	q.store = &store{db: db, dialect: dialectSQLite}
	return startClient(ctx, q, riversqlite.New(db), cfg)
}

// startClient migrates River's tables and builds its client for a driver.
func startClient[TTx any](ctx context.Context, q *Queue, driver riverdriver.Driver[TTx], cfg *river.Config) error {
	m, err := rivermigrate.New(driver, nil)
	if err != nil {
		return fmt.Errorf("queue migrations: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("create River's tables: %w", err)
	}
	c, err := river.NewClient(driver, cfg)
	if err != nil {
		return fmt.Errorf("queue client: %w", err)
	}
	q.client, q.exec = c, driver.GetExecutor()
	return nil
}

var userinfo = regexp.MustCompile(`//[^@/]*@`)

// redact hides a database URL's password from messages.
func redact(url string) string { return userinfo.ReplaceAllString(url, "//***@") }

// queueName is the River queue of a profile.
func queueName(profile string) string {
	return "profile-" + strings.Trim(regexp.MustCompile(`[_-]+`).ReplaceAllString(strings.ToLower(profile), "-"), "-")
}

// vmQueueName is the River queue of the tasks pinned to one VM.
func vmQueueName(vm string) string {
	sum := sha256.Sum256([]byte(vm))
	return "vm-" + hex.EncodeToString(sum[:8])
}

// workQueues sizes a queue per profile that has VMs on this host, and one
// per VM for pinned tasks.
func (q *Queue) workQueues() (map[string]int, error) {
	out := map[string]int{}
	seen := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(q.pool.Profiles())) {
		qn := queueName(name)
		if other, ok := seen[qn]; ok {
			return nil, fmt.Errorf("profiles %s and %s differ only by case or separators; the queue needs them told apart", other, name)
		}
		seen[qn] = name
		if n := len(q.pool.Serves(name)); n > 0 {
			out[qn] = n
		}
	}
	for name := range q.pool.VMs() {
		out[vmQueueName(name)] = 1
	}
	return out, nil
}

// reclaim puts back the jobs this host was running when its previous
// process died: no process of this host runs them now (the state
// directory's lock makes sure of that), and waiting for River's rescuer
// would leave them stuck until their deadline.
func (q *Queue) reclaim(ctx context.Context) error {
	res, err := q.client.JobList(ctx, river.NewJobListParams().States(rivertype.JobStateRunning).First(10000))
	if err != nil {
		return fmt.Errorf("list running jobs: %w", err)
	}
	now := time.Now().UTC()
	p := &riverdriver.JobRescueManyParams{StuckHorizon: now.Add(time.Second)}
	errData, _ := json.Marshal(rivertype.AttemptError{At: now, Error: "the host working it (" + q.opts.Host + ") was restarted"})
	for _, j := range res.Jobs {
		if len(j.AttemptedBy) == 0 || j.AttemptedBy[len(j.AttemptedBy)-1] != q.opts.Host {
			continue
		}
		p.ID = append(p.ID, j.ID)
		p.Error = append(p.Error, errData)
		p.FinalizedAt = append(p.FinalizedAt, nil)
		p.ScheduledAt = append(p.ScheduledAt, now)
		p.State = append(p.State, string(rivertype.JobStateAvailable))
	}
	if len(p.ID) == 0 {
		return nil
	}
	q.log.Warn("putting back the jobs this host was running when it stopped", "jobs", p.ID)
	if _, err := q.exec.JobRescueMany(ctx, p); err != nil {
		return fmt.Errorf("put back this host's jobs: %w", err)
	}
	return nil
}

// repair inserts the jobs of tasks accepted just before a crash that left
// them without jobs; uniqueness keeps a job from being inserted twice.
func (q *Queue) repair(ctx context.Context) error {
	rows, err := q.store.db.QueryContext(ctx, q.store.rebind(`SELECT id FROM sandbox_task WHERE jobs = '' AND finished_ns = 0`))
	if err != nil {
		return err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	rows.Close()
	for _, id := range ids {
		t, err := q.store.task(ctx, id)
		if err != nil {
			return err
		}
		if err := q.insertJobs(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// Start begins working the jobs of this host's VMs, until Stop: ctx bounds
// the start only, so that the caller's cancellation (a signal) leads to the
// orderly Stop rather than to River's own hard stop.
func (q *Queue) Start(ctx context.Context) error {
	return q.client.Start(context.WithoutCancel(ctx))
}

// Stop ends the work: running analyses are interrupted, their VMs cleaned
// (each within its cleanup_timeout) and their jobs put back in the queue
// for the next start, or for another host.
func (q *Queue) Stop(ctx context.Context) error {
	return q.client.StopAndCancel(ctx)
}

// Close releases the database.
func (q *Queue) Close() {
	for i := len(q.close) - 1; i >= 0; i-- {
		q.close[i]()
	}
	q.close = nil
}

// Host is this host's name.
func (q *Queue) Host() string { return q.opts.Host }

// Profiles are the profiles tasks may ask for.
func (q *Queue) Profiles() map[string]config.Profile { return q.pool.Profiles() }

// VMs are this host's VMs.
func (q *Queue) VMs() map[string]lifecycle.VM { return q.pool.VMs() }

// Unusable names the VMs of this host taken out of service, with why.
func (q *Queue) Unusable() map[string]string { return q.pool.Unusable() }

// Depth counts, per profile, the analyses not yet ended.
func (q *Queue) Depth(ctx context.Context) (map[string]int, error) { return q.store.depth(ctx) }

// Counts counts the tasks in each state.
func (q *Queue) Counts(ctx context.Context) (map[string]int, error) { return q.store.countByState(ctx) }

// Ping checks that the database answers.
func (q *Queue) Ping(ctx context.Context) error { return q.store.db.PingContext(ctx) }

// localSample is the task's sample as a file on this host, written from
// the database once and checked against its digest.
func (q *Queue) localSample(ctx context.Context, t *Task) (engine.Sample, error) {
	dir := filepath.Join(q.opts.StateDir, "samples")
	path := filepath.Join(dir, t.Sample.SHA256)
	if s, err := engine.OpenSample(path); err == nil && s.SHA256 == t.Sample.SHA256 {
		s.Name = t.Sample.Name
		return s, nil
	}
	data, err := q.store.sampleData(ctx, t.Sample.SHA256)
	if err != nil {
		return engine.Sample{}, fmt.Errorf("sample %s: %w", t.Sample.SHA256, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return engine.Sample{}, err
	}
	tmp, err := os.CreateTemp(dir, ".sample-*")
	if err != nil {
		return engine.Sample{}, err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return engine.Sample{}, fmt.Errorf("sample %s: %w", t.Sample.SHA256, err)
	}
	s, err := engine.OpenSample(path)
	if err != nil {
		return engine.Sample{}, err
	}
	if s.SHA256 != t.Sample.SHA256 {
		return engine.Sample{}, fmt.Errorf("sample %s: the stored bytes hash to %s", t.Sample.SHA256, s.SHA256)
	}
	s.Name = t.Sample.Name
	return s, nil
}
