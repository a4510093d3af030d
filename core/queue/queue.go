// Package queue is the durable task queue of `sandbox serve`: tasks
// submitted to it survive a restart of the service or of the host, and
// several hosts can share it.
//
// Every accepted task ends exactly once, by construction. A submission is
// one transaction: the sample, the task, one analysis row per profile and
// one River job per analysis (github.com/riverqueue/river) commit
// together. An analysis row names the job that owns it; an analysis ends
// only through its owner, once, whatever way the job ends (a result, an
// error at its last attempt, a panic, River discarding or cancelling it,
// its profile gone), and a sweep on every host ends whatever a job left
// unended. A task ends when its last analysis does, after its report is
// written. Hosts heartbeat in the database: the running analyses of a host
// that stops are taken over at once by a new job, the lost attempt
// recorded, and the old job, should it ever run, finds itself superseded.
//
// One host keeps everything in an embedded SQLite file; many hosts share a
// PostgreSQL database. Each host works only the jobs of the profiles whose
// VMs it has: every profile is a River queue, which a host subscribes to
// with as many workers as it has VMs in the profile. A job runs its
// analysis through the engine's pool, as `sandbox run` does.
package queue

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// Options configures a Queue.
type Options struct {
	// Database is a PostgreSQL URL (postgres://...) shared by every host,
	// or empty for an SQLite file in StateDir that this host alone uses.
	Database string
	// StateDir holds the SQLite file and the samples being received.
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
	// DeadAfter is how long a host may go without a heartbeat before the
	// others think it dead and take its running analyses over.
	DeadAfter time.Duration
	// MaxAttempts bounds how often a job is tried when no VM could run it.
	MaxAttempts int
	// Logger receives the queue's and River's log.
	Logger hclog.Logger
	// OnResult is told every analysis this host records, as it is
	// recorded.
	OnResult func(*engine.Result)
	// ArtifactLimit is the largest artifact kept in the database, for
	// every host to serve; 0 means config.DefaultArtifactLimit.
	ArtifactLimit int64
	// Retention is how long the samples and artifacts of a task that has
	// ended are kept; 0 means config.DefaultRetention.
	Retention time.Duration
}

// Queue is the durable queue of one host.
type Queue struct {
	opts   Options
	log    hclog.Logger
	db     *db
	client *river.Client[*sql.Tx]
	pool   *engine.Pool
	schema int64
	// queues maps each River queue this host works to its worker count.
	queues map[string]int
	// started is when this process opened the queue: analyses its host
	// name was running before are its dead predecessor's.
	started time.Time

	// background ends the heartbeat, the sweep, the database watch and the
	// progress writer; loops waits for them.
	background  context.CancelFunc
	loops       sync.WaitGroup
	unsubscribe func()

	mu sync.Mutex
	// working holds the task and the cancel function of each job this host
	// runs, by job id, so that a cancellation takes effect at once.
	working map[int64]running
	// progress is the latest step of each running analysis of this host,
	// written to its row by the progress writer.
	progress map[[2]string]engine.Event
	closed   bool
	// maintaining holds one slot per VM of this host, taken by a cleanup
	// or reconciliation of it: a second one (an operator's, beside the
	// one the start began) waits for the first instead of failing on
	// the VM being in use by this very process.
	maintaining map[string]chan struct{}
	// beforeClaim, set by tests, runs as a job begins, before it claims
	// its analysis: where a host can die with a job River thinks running.
	beforeClaim func()
}

// running is a job under way on this host.
type running struct {
	task   string
	cancel context.CancelCauseFunc
}

// analysisArgs is one job: one task's analysis with one profile. Attempt
// is 0 for the job of the submission and counts up for each job that took
// the analysis over from a dead host.
type analysisArgs struct {
	Task    string `json:"task" river:"unique"`
	Profile string `json:"profile" river:"unique"`
	Attempt int    `json:"attempt,omitempty" river:"unique"`
}

func (analysisArgs) Kind() string { return "sandbox.analysis" }

// Open connects to the database, migrates River's tables and the queue's
// own, takes over what this host was running when its previous process
// died, and prepares the workers. Start begins working.
func Open(ctx context.Context, opts Options) (*Queue, error) {
	if opts.Host == "" {
		return nil, errors.New("queue: a host name is needed")
	}
	if opts.Pool == nil || opts.Lifecycle == nil {
		return nil, errors.New("queue: a pool and a lifecycle manager are needed")
	}
	if opts.DeadAfter <= 0 {
		opts.DeadAfter = config.DefaultDeadAfter
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = config.DefaultMaxAttempts
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	q := &Queue{opts: opts, log: opts.Logger, pool: opts.Pool, working: map[int64]running{},
		progress: map[[2]string]engine.Event{}, started: time.Now(), maintaining: map[string]chan struct{}{}}
	for name := range opts.Pool.VMs() {
		q.maintaining[name] = make(chan struct{}, 1)
	}
	var err error
	if q.queues, err = q.workQueues(); err != nil {
		return nil, err
	}
	if q.db, err = openDB(ctx, opts.Database, opts.StateDir); err != nil {
		return nil, err
	}
	if err := q.connect(ctx); err != nil {
		q.db.Close()
		return nil, err
	}
	if err := q.heartbeat(ctx); err != nil {
		q.db.Close()
		return nil, fmt.Errorf("record this host in the queue: %w", err)
	}
	// What this host name was running belongs to its previous process,
	// which is dead (the state directory's lock keeps a second one out).
	if err := q.takeOver(ctx, q.opts.Host, "the host was restarted"); err != nil {
		q.db.Close()
		return nil, err
	}
	if _, err := q.db.exec(ctx, q.db, `UPDATE sandbox_task SET ending_host = '', ending_ns = 0
		WHERE ending_host = ? AND finished_ns = 0`, q.opts.Host); err != nil {
		q.db.Close()
		return nil, fmt.Errorf("let go of the tasks this host's previous process was ending: %w", err)
	}
	return q, nil
}

// connect migrates the tables and builds the River client.
func (q *Queue) connect(ctx context.Context) error {
	riverLog := newSlog(q.log.Named("river"))
	var driver riverdriver.Driver[*sql.Tx]
	if q.db.dialect == dialectPostgres {
		driver = riverdatabasesql.New(q.db.DB)
	} else {
		driver = riversqlite.New(q.db.DB)
	}
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Logger: riverLog})
	if err != nil {
		return fmt.Errorf("queue migrations: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("create River's tables: %w", err)
	}
	if q.schema, err = q.db.migrate(ctx, newSlog(q.log.Named("migrate"))); err != nil {
		return err
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &worker{q: q})
	queues := map[string]river.QueueConfig{}
	for name, n := range q.queues {
		// A profile's queue is looked at five times a second, so that a
		// task starts soon after a VM is free (a look is a query: at
		// twenty a second per profile the looks were most of the CPU a
		// host spent between tasks, for analyses that take minutes); a
		// VM's own queue (tasks pinned to it, rare) seldom, so that
		// hundreds of VMs do not poll the database.
		poll := 200 * time.Millisecond
		if strings.HasPrefix(name, "vm-") {
			poll = 2 * time.Second
		}
		queues[name] = river.QueueConfig{MaxWorkers: n, FetchPollInterval: poll}
	}
	cfg := &river.Config{
		ID:           q.opts.Host,
		Queues:       queues,
		Workers:      workers,
		JobTimeout:   -1, // each job's own deadline: worker.Timeout
		MaxAttempts:  q.opts.MaxAttempts,
		ErrorHandler: &errorHandler{q: q},
		// A dead host's analyses are taken over through the heartbeats
		// within seconds; River's own rescue of its stuck jobs is only
		// tidying, long after.
		RescueStuckJobsAfter: 24 * time.Hour,
		FetchCooldown:        10 * time.Millisecond,
		FetchPollInterval:    2 * time.Second,
		// The queues poll (above) on both dialects: PostgreSQL through
		// database/sql has no LISTEN, and SQLite's in-process notifier
		// fails the client's start when a busy machine keeps it from
		// answering within its fixed 5 s; nothing of ours waits on it.
		PollOnly: true,
		Logger:   riverLog,
	}
	if len(queues) == 0 {
		cfg.Queues, cfg.Workers = nil, nil // insert-only: this host has no VM
	}
	q.client, err = river.NewClient(driver, cfg)
	if err != nil {
		return fmt.Errorf("queue client: %w", err)
	}
	return nil
}

var separators = regexp.MustCompile(`[_-]+`)

// queueName is the River queue of a profile.
func queueName(profile string) string {
	return "profile-" + strings.Trim(separators.ReplaceAllString(strings.ToLower(profile), "-"), "-")
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

// Start begins working the jobs of this host's VMs, heartbeating and
// sweeping, until Stop: ctx bounds the start only, so that the caller's
// cancellation (a signal) leads to the orderly Stop rather than to
// River's own hard stop.
func (q *Queue) Start(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	q.background = cancel
	q.unsubscribe = q.pool.Events().Subscribe(q.observe)
	q.loops.Go(func() { q.heartbeats(bg) })
	q.loops.Go(func() { q.sweeps(bg) })
	q.loops.Go(func() { q.writeProgress(bg) })
	q.loops.Go(func() { q.prunes(bg) })
	q.reconcileAtStart(context.WithoutCancel(bg))
	q.loops.Go(func() {
		q.db.watch(bg, time.Second, func(err error) {
			q.log.Error("the queue's database is lost: this host takes no more work", "error", err)
			// River's own stop waits for the jobs, which need the database:
			// cancel them, their VMs are cleaned all the same.
			go q.client.StopAndCancel(context.WithoutCancel(bg)) //nolint:errcheck // the error is the lost database's
		})
	})
	return q.client.Start(context.WithoutCancel(ctx))
}

// Stop ends the work: running analyses are interrupted, their VMs cleaned
// (each within its cleanup_timeout) and their jobs put back in the queue
// for the next start, or for another host.
func (q *Queue) Stop(ctx context.Context) error {
	err := q.client.StopAndCancel(ctx)
	if q.background != nil {
		q.background()
		q.loops.Wait()
		q.unsubscribe()
	}
	return err
}

// Close releases the database.
func (q *Queue) Close() {
	q.mu.Lock()
	closed := q.closed
	q.closed = true
	q.mu.Unlock()
	if !closed {
		q.db.Close()
	}
}

// Host is this host's name.
func (q *Queue) Host() string { return q.opts.Host }

// DeadAfter is how long a host may go without a heartbeat before the
// others take its running analyses over.
func (q *Queue) DeadAfter() time.Duration { return q.opts.DeadAfter }

// Schema is the version of the queue's tables in the database.
func (q *Queue) Schema() int64 { return q.schema }

// Profiles are the profiles tasks may ask for.
func (q *Queue) Profiles() map[string]config.Profile { return q.pool.Profiles() }

// VMs are this host's VMs.
func (q *Queue) VMs() map[string]lifecycle.VM { return q.pool.VMs() }

// Unusable names the VMs of this host taken out of service, with why.
func (q *Queue) Unusable() map[string]string { return q.pool.Unusable() }

// Depth counts, per profile, the analyses not yet ended (every host's,
// whichever profiles this host has).
func (q *Queue) Depth(ctx context.Context) (map[string]int, error) { return q.db.depth(ctx) }

// Counts counts the tasks in each state.
func (q *Queue) Counts(ctx context.Context) (map[string]int, error) { return q.db.countByState(ctx) }

// Ping checks that the database answers and can still be trusted.
func (q *Queue) Ping(ctx context.Context) error {
	if err := q.db.check(); err != nil {
		return err
	}
	return q.db.PingContext(ctx)
}

// observe keeps the latest step of each analysis this host runs, for the
// progress writer: the engine's subscribers must return at once, so the
// database is written elsewhere.
func (q *Queue) observe(e engine.Event) {
	if e.Task == "" || e.Step.Final() {
		return
	}
	q.mu.Lock()
	q.progress[[2]string{e.Task, e.Profile}] = e
	q.mu.Unlock()
}

// writeProgress writes the analyses' latest steps to their rows, so that
// every host's API shows where a running analysis is.
func (q *Queue) writeProgress(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		q.mu.Lock()
		batch := q.progress
		q.progress = map[[2]string]engine.Event{}
		q.mu.Unlock()
		for key, e := range batch {
			_, err := q.db.exec(ctx, q.db, `UPDATE sandbox_analysis SET step = ?, vm = ?, updated_ns = ?
				WHERE task_id = ? AND profile = ? AND state = 'running' AND host = ?`,
				string(e.Step), e.VM, e.At.UnixNano(), key[0], key[1], q.opts.Host)
			if err != nil && ctx.Err() == nil {
				q.log.Debug("could not record an analysis's step", "task", key[0], "profile", key[1], "error", err)
			}
		}
	}
}
