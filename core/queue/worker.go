package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// worker runs one job: one task's analysis with one profile, on a free VM
// of this host.
type worker struct {
	river.WorkerDefaults[analysisArgs]
	q *Queue
}

// Timeout is the job's deadline: the longest the analysis may take on
// any of this host's VMs of the profile. A job is never rescued from a
// host before it has passed.
func (w *worker) Timeout(job *river.Job[analysisArgs]) time.Duration {
	p, ok := w.q.opts.Profiles[job.Args.Profile]
	if !ok {
		return time.Minute
	}
	var bound time.Duration
	for _, name := range p.VMs {
		if vm, ok := w.q.opts.VMs[name]; ok {
			bound = max(bound, p.Bound(vm.Settings))
		}
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
	q.working[job.ID] = cancel
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
	prof, ok := q.opts.Profiles[args.Profile]
	if !ok {
		return q.giveUp(ctx, job, t, fmt.Errorf("host %s has no profile %s any more", q.opts.Host, args.Profile))
	}
	candidates := prof.VMs
	if t.VM != "" {
		candidates = []string{t.VM}
	}
	if err := q.store.markRunning(ctx, t.ID); err != nil {
		return err
	}
	sample, err := q.localSample(ctx, t)
	if err != nil {
		return err
	}

	for res == nil || res.State == engine.StepQueued {
		vm, err := q.pool.take(ctx, candidates)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return q.giveUp(ctx, job, t, err)
		}
		lease, err := q.opts.Lifecycle.Lease(ctx, vm)
		if err != nil {
			q.pool.put(vm.Name)
			return err
		}
		r, unusable, err := q.engine.Analyze(ctx, lease, sample, prof, q.opts.OutDir)
		lease.Release()
		if unusable != "" {
			q.pool.drop(vm.Name, unusable)
		} else {
			q.pool.put(vm.Name)
		}
		if err != nil {
			return err
		}
		res = r
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

// interrupted ends a job whose context ended (whose VM, if it had one, has
// been cleaned). Cancelled through the API, the analysis is recorded
// cancelled, whatever it had reached; when this host is stopping, the job
// goes back to the queue and runs again from the start.
func (q *Queue) interrupted(ctx context.Context, task string, res *engine.Result, profile string) error {
	if !errors.Is(context.Cause(ctx), river.ErrJobCancelledRemotely) {
		return ctx.Err()
	}
	if res == nil || res.State == engine.StepQueued {
		res = &engine.Result{Profile: profile, State: engine.StepCancelled, Verdict: engine.VerdictError,
			FailedStep: engine.StepQueued, Transitions: []engine.Transition{{Step: engine.StepCancelled, At: time.Now().UTC()}}}
	}
	res.State = engine.StepCancelled
	res.Error = strings.TrimSuffix("cancelled through the API; "+res.Error, "; ")
	ctx = context.WithoutCancel(ctx)
	if err := q.record(ctx, task, res); err != nil {
		return err
	}
	if _, err := q.finishTask(ctx, task); err != nil {
		return err
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
	r := &engine.Result{Profile: job.Args.Profile, State: engine.StepFailed, Verdict: engine.VerdictError,
		FailedStep: engine.StepQueued, Error: fmt.Sprintf("no VM could run it after %d attempts: %v", job.Attempt, why),
		Transitions: []engine.Transition{{Step: engine.StepFailed, At: time.Now().UTC()}}}
	if err := q.record(ctx, t.ID, r); err != nil {
		return err
	}
	_, err := q.finishTask(ctx, t.ID)
	return err
}

// vmPool hands out this host's VMs, one job at a time each.
type vmPool struct {
	vms map[string]lifecycle.VM

	mu   sync.Mutex
	busy map[string]bool
	// held VMs are kept from new jobs while an operator's cleanup waits.
	held    map[string]bool
	out     map[string]string
	changed chan struct{}
}

func newVMPool(vms map[string]lifecycle.VM) *vmPool {
	return &vmPool{vms: vms, busy: map[string]bool{}, held: map[string]bool{}, out: map[string]string{}, changed: make(chan struct{})}
}

// hold keeps new jobs off a VM until release.
func (p *vmPool) hold(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held[name] = true
}

func (p *vmPool) release(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.held, name)
	p.notifyLocked()
}

// waitIdle waits until no job uses the VM.
func (p *vmPool) waitIdle(ctx context.Context, name string) error {
	for {
		p.mu.Lock()
		busy, changed := p.busy[name], p.changed
		p.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// restore puts a VM taken out of service back into it.
func (p *vmPool) restore(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.out, name)
	p.notifyLocked()
}

func (p *vmPool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// take waits until one of names is free on this host and takes it.
func (p *vmPool) take(ctx context.Context, names []string) (lifecycle.VM, error) {
	for {
		p.mu.Lock()
		usable := 0
		for _, n := range names {
			vm, ours := p.vms[n]
			if !ours || p.out[n] != "" {
				continue
			}
			usable++
			if !p.busy[n] && !p.held[n] {
				p.busy[n] = true
				p.mu.Unlock()
				return vm, nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		if usable == 0 {
			var why []string
			for _, n := range names {
				switch {
				case p.vms[n].Name == "":
					why = append(why, n+" (not on this host)")
				default:
					why = append(why, n+" ("+p.outReason(n)+")")
				}
			}
			return lifecycle.VM{}, fmt.Errorf("no usable VM on this host: %s", strings.Join(why, ", "))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return lifecycle.VM{}, ctx.Err()
		}
	}
}

func (p *vmPool) outReason(n string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out[n]
}

// put gives a VM back.
func (p *vmPool) put(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, name)
	p.notifyLocked()
}

// drop takes a VM out of service on this host until the service restarts.
func (p *vmPool) drop(name, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, name)
	p.out[name] = why
	p.notifyLocked()
}

func (p *vmPool) unusable() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(p.out)) {
		out[k] = p.out[k]
	}
	return out
}

// Cleanup cleans one VM of this host between jobs (it waits for the VM's
// current job to end) and, when the cleanup succeeds, puts a VM taken out
// of service back into it.
func (q *Queue) Cleanup(ctx context.Context, name string) (*lifecycle.Report, error) {
	return q.maintain(ctx, name, q.opts.Lifecycle.Cleanup)
}

// Reconcile is lifecycle reconciliation of one VM of this host between
// jobs: a VM an earlier process left behind is cleaned, a clean one left
// alone. A success puts a VM taken out of service back into it.
func (q *Queue) Reconcile(ctx context.Context, name string) (*lifecycle.Report, error) {
	return q.maintain(ctx, name, q.opts.Lifecycle.Reconcile)
}

func (q *Queue) maintain(ctx context.Context, name string,
	op func(context.Context, lifecycle.VM, ...lifecycle.Option) (*lifecycle.Report, error)) (*lifecycle.Report, error) {
	vm, ok := q.opts.VMs[name]
	if !ok {
		return nil, inputErrorf("not_found", "no VM %q on host %s", name, q.opts.Host)
	}
	q.pool.hold(name)
	defer q.pool.release(name)
	if err := q.pool.waitIdle(ctx, name); err != nil {
		return nil, err
	}
	rep, err := op(ctx, vm)
	if err == nil {
		q.pool.restore(name)
	}
	return rep, err
}
