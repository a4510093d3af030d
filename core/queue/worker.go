package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// worker runs one job: one task's analysis with one profile, on a free VM
// of this host, through the engine's pool.
type worker struct {
	river.WorkerDefaults[analysisArgs]
	q *Queue
}

// Timeout is the job's deadline: the longest the analysis may take on
// any of this host's VMs of the profile.
func (w *worker) Timeout(job *river.Job[analysisArgs]) time.Duration {
	p, ok := w.q.pool.Profile(job.Args.Profile)
	if !ok {
		return time.Minute
	}
	var bound time.Duration
	for _, name := range w.q.pool.Serves(p.Name) {
		bound = max(bound, engine.Bound(p, w.q.pool.VMs()[name].Settings))
	}
	return max(bound, time.Minute)
}

// cancelPoll is how often a running job looks at its analysis's cancel
// mark, for a cancel made through another host.
const cancelPoll = time.Second

// An analysis's end is recorded within recordFor, tried again as
// recordPolicy says: a PostgreSQL restart takes seconds to a minute.
var (
	recordFor    = 5 * time.Minute
	recordPolicy = wait.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Factor: 2, Jitter: 0.2}
)

// Work runs the analysis its job owns and records how it ended. An
// analysis that ran, whatever its outcome, is a result, not a job failure;
// the job fails (and River tries it again later, maybe on another host)
// only when no VM of this host could take it, or when this host is
// stopping, in which case the VM has been cleaned and the job goes back
// to the queue. A job that no longer owns its analysis (another host took
// it over, or it has ended) does nothing.
func (w *worker) Work(ctx context.Context, job *river.Job[analysisArgs]) (err error) {
	q := w.q
	args := job.Args
	q.log.Debug("job started", "job", job.ID, "task", args.Task, "profile", args.Profile, "attempt", job.Attempt)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	q.mu.Lock()
	q.working[job.ID] = running{task: args.Task, cancel: cancel}
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.working, job.ID)
		q.mu.Unlock()
	}()

	if q.beforeClaim != nil {
		q.beforeClaim()
	}
	a, claimed, err := q.claim(ctx, args, job.ID)
	if err != nil || !claimed {
		return err
	}
	var res *engine.Result
	defer func() {
		if ctx.Err() != nil {
			err = q.interrupted(ctx, args, job.ID, res)
		}
	}()
	if a.cancel {
		cancel(river.ErrJobCancelledRemotely)
		return nil
	}
	go q.watchCancel(ctx, args, cancel)

	t, err := q.db.task(ctx, q.db, args.Task)
	if err != nil {
		return err
	}
	prof, ok := q.pool.Profile(args.Profile)
	if !ok || len(q.pool.Serves(args.Profile)) == 0 {
		return q.giveUp(ctx, job, fmt.Errorf("host %s runs no profile %s (any more)", q.opts.Host, args.Profile))
	}
	sample, err := q.localSample(ctx, t, job.ID)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(sample.Path))
	res, err = q.pool.Run(ctx, engine.Task{ID: t.ID, Sample: sample, Profile: prof, VM: t.VM, Dir: q.taskDir(t)})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return q.giveUp(ctx, job, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return q.end(ctx, args, job.ID, res)
}

// claim makes the job's analysis running on this host, if the job owns it
// and it has not ended; the task becomes running with it.
func (q *Queue) claim(ctx context.Context, args analysisArgs, job int64) (analysisRow, bool, error) {
	var a analysisRow
	claimed := false
	err := q.db.inTx(ctx, func(tx *sql.Tx) error {
		now := time.Now().UnixNano()
		res, err := q.db.exec(ctx, tx, `UPDATE sandbox_analysis SET state = 'running', host = ?, vm = '', step = '', updated_ns = ?
			WHERE task_id = ? AND profile = ? AND job_id = ? AND state IN ('queued', 'running')`,
			q.opts.Host, now, args.Task, args.Profile, job)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		claimed = true
		if _, err := q.db.exec(ctx, tx, `UPDATE sandbox_task SET state = 'running' WHERE id = ? AND state = 'queued'`, args.Task); err != nil {
			return err
		}
		a, err = q.db.analysis(ctx, tx, args.Task, args.Profile)
		return err
	})
	if err != nil {
		return a, false, fmt.Errorf("claim the analysis of task %s with %s: %w", args.Task, args.Profile, err)
	}
	if !claimed {
		q.log.Debug("job superseded or its analysis ended: nothing to do", "job", job, "task", args.Task, "profile", args.Profile)
	}
	return a, claimed, nil
}

// watchCancel cancels the job when its analysis is marked cancelled, for a
// cancel made through another host (one through this host's API takes
// effect at once).
func (q *Queue) watchCancel(ctx context.Context, args analysisArgs, cancel context.CancelCauseFunc) {
	err := wait.Until(ctx, wait.Policy{Initial: cancelPoll, Factor: 1}, func(ctx context.Context) (bool, error) {
		var mark int
		err := q.db.queryRow(ctx, q.db, `SELECT cancel_requested FROM sandbox_analysis WHERE task_id = ? AND profile = ?`,
			args.Task, args.Profile).Scan(&mark)
		return err == nil && mark != 0, nil
	})
	if err == nil {
		cancel(river.ErrJobCancelledRemotely)
	}
}

// end records how the job's analysis ended and, if it was the task's
// last, ends the task. The database may be away for a while (a
// PostgreSQL restart): the record is tried again, within the job's
// context, rather than the analysis lost or run again.
func (q *Queue) end(ctx context.Context, args analysisArgs, job int64, r *engine.Result) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordFor)
	defer cancel()
	_, err := wait.Retry(ctx, recordPolicy, func(err error) bool { return !errors.Is(err, ErrDatabaseLost) },
		func(ctx context.Context) error {
			err := q.db.inTx(ctx, func(tx *sql.Tx) error { return q.endWith(ctx, tx, args.Task, job, r) })
			if err != nil && !errors.Is(err, ErrDatabaseLost) {
				q.log.Warn("cannot record an analysis yet; trying again", "task", args.Task, "profile", args.Profile, "error", err)
			}
			return err
		})
	if err != nil {
		return err
	}
	if err := q.completeTask(ctx, args.Task); err != nil {
		q.log.Warn("the task's analyses have ended; its end is left to the sweep", "task", args.Task, "error", err)
	}
	return nil
}

// interrupted ends a job whose context ended (whose VM, if it had one, has
// been cleaned). Cancelled through the API, the analysis is recorded
// cancelled if it had not reached its end, as it stands if it had (a
// cancel that came while the VM was being cleaned after a finished
// analysis is too late to change it, as Ctrl-C is for `sandbox run`);
// when this host is stopping, the job goes back to the queue and runs
// again from the start.
func (q *Queue) interrupted(ctx context.Context, args analysisArgs, job int64, res *engine.Result) error {
	if !errors.Is(context.Cause(ctx), river.ErrJobCancelledRemotely) {
		return ctx.Err()
	}
	if res == nil || !res.State.Final() {
		res = engine.NotRun(args.Profile, engine.StepCancelled, "cancelled through the API before it ran")
	}
	if err := q.end(ctx, args, job, res); err != nil {
		return err
	}
	if res.State != engine.StepCancelled {
		return nil
	}
	return river.JobCancel(errors.New("cancelled through the API"))
}

// giveUp fails the job for another try, or, at its last attempt, records
// the analysis as failed so that the task still ends.
func (q *Queue) giveUp(ctx context.Context, job *river.Job[analysisArgs], why error) error {
	if job.Attempt < job.MaxAttempts {
		return why
	}
	r := engine.NotRun(job.Args.Profile, engine.StepFailed, fmt.Sprintf("no VM could run it after %d attempts: %v", job.Attempt, why))
	var nv *engine.NoVMError
	if errors.As(why, &nv) {
		r.Skipped = nv.Skipped
	}
	return q.end(ctx, job.Args, job.ID, r)
}

// localSample writes the task's sample from the database to a private
// file of this host for the driver to read, and checks its digest; the
// caller removes it when the analysis has ended.
func (q *Queue) localSample(ctx context.Context, t *Task, job int64) (engine.Sample, error) {
	dir := filepath.Join(q.opts.StateDir, "work", fmt.Sprint(job))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return engine.Sample{}, err
	}
	path := filepath.Join(dir, engine.SafeName(t.Sample.Name))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return engine.Sample{}, err
	}
	err = q.db.copySample(ctx, t.Sample.SHA256, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.RemoveAll(dir)
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

// errorHandler ends the analysis of a job that River will not try again:
// one that failed at its last attempt, or panicked there. A job with
// attempts left is tried again, as River would.
type errorHandler struct{ q *Queue }

func (h *errorHandler) HandleError(ctx context.Context, job *rivertype.JobRow, err error) *river.ErrorHandlerResult {
	h.lastAttempt(ctx, job, fmt.Sprintf("its job failed at its last attempt (%d of %d): %v", job.Attempt, job.MaxAttempts, err))
	return nil
}

func (h *errorHandler) HandlePanic(ctx context.Context, job *rivertype.JobRow, panicVal any, trace string) *river.ErrorHandlerResult {
	h.q.log.Error("an analysis job panicked", "job", job.ID, "panic", panicVal, "trace", trace)
	h.lastAttempt(ctx, job, fmt.Sprintf("its job panicked at its last attempt (%d of %d): %v", job.Attempt, job.MaxAttempts, panicVal))
	return nil
}

func (h *errorHandler) lastAttempt(ctx context.Context, job *rivertype.JobRow, why string) {
	if job.Attempt < job.MaxAttempts {
		return
	}
	args, err := decodeArgs(job)
	if err != nil {
		h.q.log.Error("a job's arguments cannot be read", "job", job.ID, "error", err)
		return
	}
	h.q.log.Error("an analysis's job will not be tried again; the analysis is recorded failed", "task", args.Task,
		"profile", args.Profile, "why", why)
	if err := h.q.end(ctx, args, job.ID, engine.NotRun(args.Profile, engine.StepFailed, why)); err != nil {
		h.q.log.Error("cannot record the analysis; the sweep will", "task", args.Task, "error", err)
	}
}

// Cleanup cleans one VM of this host between jobs (it waits for the VM's
// current job to end) and, when the cleanup succeeds, puts a VM taken out
// of service back into it.
func (q *Queue) Cleanup(ctx context.Context, name string) (*lifecycle.OpReport, error) {
	return q.maintain(ctx, name, q.opts.Lifecycle.Cleanup)
}

// Reconcile is lifecycle reconciliation of one VM of this host between
// jobs: a VM an earlier process left behind is cleaned, a clean one left
// alone. A success puts a VM taken out of service back into it.
func (q *Queue) Reconcile(ctx context.Context, name string) (*lifecycle.OpReport, error) {
	return q.maintain(ctx, name, q.opts.Lifecycle.Reconcile)
}

// reconcileAtStart cleans, in the background, each VM of this host whose
// lease an earlier process held when it died (one killed in the middle of
// a task), so that a VM no task comes to again is not left running or
// locked until one does. Any other VM is left to its next task's check. A task that leases the VM first reconciles it itself; Stop
// waits for these, each bounded by its VM's cleanup_timeout, because one
// cut short would leave the VM as dirty as it found it.
func (q *Queue) reconcileAtStart(ctx context.Context) {
	abandoned := func(ctx context.Context, vm lifecycle.VM, opts ...lifecycle.Option) (*lifecycle.OpReport, error) {
		return q.opts.Lifecycle.Reconcile(ctx, vm, append(opts, lifecycle.OnlyAbandoned())...)
	}
	for name := range q.pool.VMs() {
		q.loops.Go(func() {
			rep, err := q.maintain(ctx, name, abandoned)
			switch {
			case err == nil && rep.Reconciled:
				q.log.Info("cleaned a VM an earlier process left behind", "vm", name)
			case errors.Is(err, lifecycle.ErrLeaseHeld):
				q.log.Debug("a VM is in use by another process; not reconciled at start", "vm", name, "error", err)
			case errors.Is(err, lifecycle.ErrQuarantined):
				q.log.Debug("a quarantined VM is not reconciled at start", "vm", name)
			case err != nil:
				q.log.Warn("cannot reconcile a VM at start; its next task tries again", "vm", name, "error", err)
			}
		})
	}
}

// maintain runs a cleanup or reconciliation of one VM of this host once
// no other one of this process is running on it and its task (if any) has
// ended, and puts it back into service when it succeeds.
func (q *Queue) maintain(ctx context.Context, name string,
	op func(context.Context, lifecycle.VM, ...lifecycle.Option) (*lifecycle.OpReport, error)) (*lifecycle.OpReport, error) {
	vm, ok := q.pool.VMs()[name]
	if !ok {
		return nil, inputErrorf("not_found", "no VM %q on host %s: GET /v1/vms lists its VMs; a VM of another host is cleaned through that host", name, q.opts.Host)
	}
	select {
	case q.maintaining[name] <- struct{}{}:
		defer func() { <-q.maintaining[name] }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	done, err := q.pool.Hold(ctx, name)
	if err != nil {
		return nil, err
	}
	rep, err := op(ctx, vm)
	done(err == nil)
	return rep, err
}
