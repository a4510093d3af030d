package queue

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/riverqueue/river"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// worker runs one job: one task's analysis with one profile, on a free VM
// of this host, through the engine's pool.
type worker struct {
	river.WorkerDefaults[analysisArgs]
	q *Queue
}

// Timeout is the job's deadline: the longest the analysis may take on
// any of this host's VMs of the profile. A job is never rescued from a
// host before it has passed.
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

// Work runs the analysis and records its result. An analysis that ran,
// whatever its outcome, is a result, not a job failure; the job fails (and
// River tries it again later, maybe on another host) only when no VM of
// this host could take it, or when this host is stopping, in which case
// the VM has been cleaned and the job goes back to the queue.
func (w *worker) Work(ctx context.Context, job *river.Job[analysisArgs]) (err error) {
	q := w.q
	args := job.Args
	q.log.Debug("job started", "job", job.ID, "task", args.Task, "profile", args.Profile, "attempt", job.Attempt)

	// A cancellation through the API ends the job wherever it is: Cancel
	// sets the task's flag, then cancels the jobs registered here (and
	// River tells the other hosts'); a job reads the flag once registered,
	// so one of the two sees the other. Whatever a cancelled job was doing
	// when it ended, its analysis is recorded cancelled.
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
	var res *engine.Result
	defer func() {
		if ctx.Err() != nil {
			err = q.interrupted(ctx, args.Task, res, args.Profile)
		}
	}()
	if cancelled, err := q.store.cancelRequested(ctx, args.Task); err == nil && cancelled {
		q.log.Debug("job cancelled before it began", "job", job.ID, "task", args.Task)
		cancel(river.ErrJobCancelledRemotely)
		return nil
	}

	t, err := q.store.task(ctx, args.Task)
	if errors.Is(err, errNoTask) {
		return river.JobCancel(fmt.Errorf("task %s no longer exists", args.Task))
	}
	if err != nil {
		return err
	}
	if done, err := q.store.hasResult(ctx, t.ID, args.Profile); err != nil || done {
		if err == nil {
			_, err = q.finishTask(ctx, t.ID)
		}
		return err
	}
	prof, ok := q.pool.Profile(args.Profile)
	if !ok {
		return q.giveUp(ctx, job, t, fmt.Errorf("host %s has no profile %s any more", q.opts.Host, args.Profile))
	}
	if err := q.store.markRunning(ctx, t.ID); err != nil {
		return err
	}
	sample, err := q.localSample(ctx, t)
	if err != nil {
		return err
	}
	res, err = q.pool.Run(ctx, engine.Task{ID: t.ID, Sample: sample, Profile: prof, VM: t.VM, Dir: q.taskDir(t)})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return q.giveUp(ctx, job, t, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := q.record(ctx, t.ID, res); err != nil {
		return err
	}
	_, err = q.finishTask(ctx, t.ID)
	return err
}

// taskDir is where a task's artifacts and report go: each task in a
// directory of its own, so that two tasks of one sample never share one.
func (q *Queue) taskDir(t *Task) string {
	return filepath.Join(q.opts.OutDir, t.Sample.SHA256, t.ID)
}

// interrupted ends a job whose context ended (whose VM, if it had one, has
// been cleaned). Cancelled through the API, the analysis is recorded
// cancelled if it had not reached its end, as it stands if it had (a
// cancel that came while the VM was being cleaned after a finished
// analysis is too late to change it, as Ctrl-C is for `sandbox run`);
// when this host is stopping, the job goes back to the queue and runs
// again from the start.
func (q *Queue) interrupted(ctx context.Context, task string, res *engine.Result, profile string) error {
	if !errors.Is(context.Cause(ctx), river.ErrJobCancelledRemotely) {
		return ctx.Err()
	}
	if res == nil || !res.State.Final() {
		res = engine.NotRun(profile, engine.StepCancelled, "cancelled through the API before it ran")
	}
	ctx = context.WithoutCancel(ctx)
	if err := q.record(ctx, task, res); err != nil {
		return err
	}
	if _, err := q.finishTask(ctx, task); err != nil {
		return err
	}
	if res.State != engine.StepCancelled {
		return nil
	}
	return river.JobCancel(errors.New("cancelled through the API"))
}

// record saves an analysis's result and tells the observer.
func (q *Queue) record(ctx context.Context, id string, r *engine.Result) error {
	if err := q.store.saveResult(ctx, id, q.opts.Host, r); err != nil {
		return err
	}
	if q.opts.OnResult != nil {
		q.opts.OnResult(r)
	}
	return nil
}

// giveUp fails the job for another try, or, at its last attempt, records
// the analysis as failed so that the task still ends.
func (q *Queue) giveUp(ctx context.Context, job *river.Job[analysisArgs], t *Task, why error) error {
	if job.Attempt < job.MaxAttempts {
		return why
	}
	r := engine.NotRun(job.Args.Profile, engine.StepFailed, fmt.Sprintf("no VM could run it after %d attempts: %v", job.Attempt, why))
	var nv *engine.NoVMError
	if errors.As(why, &nv) {
		r.Skipped = nv.Skipped
	}
	if err := q.record(ctx, t.ID, r); err != nil {
		return err
	}
	_, err := q.finishTask(ctx, t.ID)
	return err
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

func (q *Queue) maintain(ctx context.Context, name string,
	op func(context.Context, lifecycle.VM, ...lifecycle.Option) (*lifecycle.OpReport, error)) (*lifecycle.OpReport, error) {
	vm, ok := q.pool.VMs()[name]
	if !ok {
		return nil, inputErrorf("not_found", "no VM %q on host %s", name, q.opts.Host)
	}
	done, err := q.pool.Hold(ctx, name)
	if err != nil {
		return nil, err
	}
	rep, err := op(ctx, vm)
	done(err == nil)
	return rep, err
}
