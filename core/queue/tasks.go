package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/sandboxhq/sandbox/core/engine"
)

// InputError is a submission or request the queue refuses, with a stable
// code for the API.
type InputError struct {
	// Code is machine-readable: unknown_profile, unknown_vm, bad_priority,
	// empty_sample, not_found, already_finished.
	Code string
	// Msg says what is wrong and what to do.
	Msg string
}

func (e *InputError) Error() string { return e.Msg }

func inputErrorf(code, format string, args ...any) *InputError {
	return &InputError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Request is what a submission asks for besides the sample.
type Request struct {
	// Profiles are the analyses; empty means every profile.
	Profiles []string
	// VM pins every analysis to one VM, which each profile must list.
	VM string
	// Priority is 1 (first) to 4 (last); 0 means 2.
	Priority int
}

// DefaultPriority is a task's priority unless the submission says.
const DefaultPriority = 2

// Submit accepts a sample: it stores it, records the task and queues one
// job per profile. Once it returns, the task is never lost: a restart of
// this or any host finishes it.
func (q *Queue) Submit(ctx context.Context, name string, data []byte, req Request) (*Task, error) {
	if len(data) == 0 {
		return nil, inputErrorf("empty_sample", "the sample is empty")
	}
	profiles, err := q.checkRequest(&req)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	t := &Task{
		ID:       newID(),
		Sample:   engine.Sample{Name: filepath.Base(strings.ReplaceAll(name, `\`, "/")), Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])},
		Profiles: profiles, VM: req.VM, Priority: req.Priority, State: StateQueued,
		Created: time.Now().UTC(), Results: []HostResult{},
	}
	if t.Sample.Name == "." || t.Sample.Name == "/" || t.Sample.Name == "" {
		t.Sample.Name = "sample"
	}
	if err := q.store.saveSample(ctx, t.Sample.SHA256, data); err != nil {
		return nil, fmt.Errorf("store the sample: %w", err)
	}
	if err := q.store.insertTask(ctx, t); err != nil {
		return nil, fmt.Errorf("record the task: %w", err)
	}
	if err := q.insertJobs(ctx, t); err != nil {
		return nil, err
	}
	return t, nil
}

func (q *Queue) checkRequest(req *Request) ([]string, error) {
	known := slices.Sorted(maps.Keys(q.pool.Profiles()))
	profiles := req.Profiles
	if len(profiles) == 0 {
		profiles = known
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range profiles {
		prof, ok := q.pool.Profile(p)
		if !ok {
			return nil, inputErrorf("unknown_profile", "no profile %q; known: %s", p, strings.Join(known, ", "))
		}
		if req.VM != "" && !slices.Contains(prof.VMs, req.VM) {
			return nil, inputErrorf("unknown_vm", "profile %s does not run on VM %q; its VMs: %s", p, req.VM, strings.Join(prof.VMs, ", "))
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, inputErrorf("unknown_profile", "no profile is configured")
	}
	if req.Priority == 0 {
		req.Priority = DefaultPriority
	}
	if req.Priority < 1 || req.Priority > 4 {
		return nil, inputErrorf("bad_priority", "priority %d: want 1 (first) to 4 (last)", req.Priority)
	}
	return out, nil
}

// insertJobs queues the task's jobs and records their ids.
func (q *Queue) insertJobs(ctx context.Context, t *Task) error {
	params := make([]river.InsertManyParams, len(t.Profiles))
	for i, p := range t.Profiles {
		queue := queueName(p)
		if t.VM != "" {
			queue = vmQueueName(t.VM)
		}
		params[i] = river.InsertManyParams{
			Args: analysisArgs{Task: t.ID, Profile: p},
			InsertOpts: &river.InsertOpts{Queue: queue, Priority: t.Priority, MaxAttempts: q.opts.MaxAttempts,
				UniqueOpts: river.UniqueOpts{ByArgs: true}},
		}
	}
	res, err := q.client.InsertMany(ctx, params)
	if err != nil {
		return fmt.Errorf("queue the task's jobs: %w", err)
	}
	ids := make([]int64, len(res))
	for i, r := range res {
		ids[i] = r.Job.ID
	}
	t.jobs = ids
	return q.store.setJobs(ctx, t.ID, ids)
}

// Task returns a task with its results so far and, once it has ended,
// its report.
func (q *Queue) Task(ctx context.Context, id string) (*Task, error) {
	t, err := q.store.task(ctx, id)
	if errors.Is(err, errNoTask) {
		return nil, inputErrorf("not_found", "no task %q", id)
	}
	return t, err
}

// Tasks lists the latest tasks, newest first, only those in state if set.
func (q *Queue) Tasks(ctx context.Context, state string, limit int) ([]*Task, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	return q.store.tasks(ctx, state, limit)
}

// Cancel stops a task: its queued analyses never run, its running ones
// are interrupted and their VMs cleaned.
func (q *Queue) Cancel(ctx context.Context, id string) (*Task, error) {
	// The task's jobs under way here stop at once, before any database
	// round trip; those that register later read the flag set below.
	q.cancelLocal(id)
	t, err := q.Task(ctx, id)
	if err != nil {
		return nil, err
	}
	if t.Final() {
		return t, inputErrorf("already_finished", "task %s already ended (%s)", id, t.State)
	}
	// The flag is for the jobs that start from now on (a worker reads it
	// once it has registered), the cancel functions for those under way on
	// this host, and River's notice for those under way elsewhere.
	if err := q.store.requestCancel(ctx, id); err != nil {
		return nil, err
	}
	// A job that registered between the first look and the flag is
	// stopped now.
	q.cancelLocal(id)
	for i, jid := range t.jobs {
		row, err := q.client.JobCancel(ctx, jid)
		if row != nil {
			q.log.Debug("job cancel", "task", id, "job", jid, "state", row.State)
		}
		if err != nil {
			if errors.Is(err, rivertype.ErrNotFound) {
				continue
			}
			return nil, fmt.Errorf("cancel job %d: %w", jid, err)
		}
		if row.State == rivertype.JobStateCancelled && i < len(t.Profiles) {
			// It never ran (or had ended): no worker will record it.
			r := engine.NotRun(t.Profiles[i], engine.StepCancelled, "cancelled before it ran")
			if err := q.record(ctx, id, r); err != nil {
				return nil, err
			}
		}
	}
	if _, err := q.finishTask(ctx, id); err != nil {
		return nil, err
	}
	return q.Task(ctx, id)
}

// cancelLocal stops the task's jobs under way on this host.
func (q *Queue) cancelLocal(task string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, j := range q.working {
		if j.task == task {
			j.cancel(river.ErrJobCancelledRemotely)
		}
	}
}

// finishTask ends a task once its every analysis has a result, and writes
// its report.json on this host.
func (q *Queue) finishTask(ctx context.Context, id string) (*Task, error) {
	t, ended, err := q.store.finish(ctx, id)
	if err != nil || !ended {
		return t, err
	}
	if err := engine.WriteReport(q.taskDir(t), t.Report); err != nil {
		return t, fmt.Errorf("report of task %s: %w", id, err)
	}
	q.log.Info("task ended", "task", id, "state", t.State, "verdict", t.Verdict)
	return t, nil
}
