package queue

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
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

// noTask is the answer for a task id the queue does not know: tasks are
// never removed (retention prunes their samples and artifacts only), so
// the id is wrong.
func noTask(id string) *InputError {
	return inputErrorf("not_found", "no task %q: check the id (the answer to its submission has it, and GET /v1/tasks lists the latest)", id)
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

// Submit accepts a sample, read from r as it arrives: it is hashed and
// spooled to a file of the state directory (never whole in memory), then
// the sample (once per digest), the task, its analyses and their jobs are
// committed in one transaction. Once Submit returns, the task is never
// lost: a restart of this or any host finishes it.
func (q *Queue) Submit(ctx context.Context, name string, r io.Reader, req Request) (*Task, error) {
	if err := q.db.check(); err != nil {
		return nil, err
	}
	profiles, err := q.checkRequest(&req)
	if err != nil {
		return nil, err
	}
	spool, sum, size, err := q.spool(r)
	if err != nil {
		return nil, err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	if size == 0 {
		return nil, inputErrorf("empty_sample", "the sample is empty: send the file's content in the form field \"file\"")
	}
	t := &Task{
		ID:       newID(),
		Sample:   engine.Sample{Name: filepath.Base(strings.ReplaceAll(name, `\`, "/")), Size: size, SHA256: sum},
		Profiles: profiles, VM: req.VM, Priority: req.Priority, State: StateQueued,
		Created: time.Now().UTC(), Results: []HostResult{},
	}
	if t.Sample.Name == "." || t.Sample.Name == "/" || t.Sample.Name == "" {
		t.Sample.Name = "sample"
	}
	err = q.db.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := q.db.putSample(ctx, tx, sum, size, spool); err != nil {
			return fmt.Errorf("store the sample: %w", err)
		}
		if _, err := q.db.exec(ctx, tx, `INSERT INTO sandbox_task (id, sha256, name, vm, priority, state, created_ns)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, t.ID, sum, t.Sample.Name, t.VM, t.Priority, StateQueued, t.Created.UnixNano()); err != nil {
			return fmt.Errorf("record the task: %w", err)
		}
		params := make([]river.InsertManyParams, len(profiles))
		for i, p := range profiles {
			params[i] = q.jobParams(t, p, 0)
		}
		res, err := q.client.InsertManyTx(ctx, tx, params)
		if err != nil {
			return fmt.Errorf("queue the task's jobs: %w", err)
		}
		for i, p := range profiles {
			if _, err := q.db.exec(ctx, tx, `INSERT INTO sandbox_analysis (task_id, profile, position, state, job_id, updated_ns)
				VALUES (?, ?, ?, ?, ?, ?)`, t.ID, p, i, StateQueued, res[i].Job.ID, t.Created.UnixNano()); err != nil {
				return fmt.Errorf("record the task's analyses: %w", err)
			}
			t.Analyses = append(t.Analyses, Analysis{Profile: p, State: StateQueued, Attempt: 1})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// spool copies a sample into a private file of the state directory,
// hashing it on the way.
func (q *Queue) spool(r io.Reader) (*os.File, string, int64, error) {
	dir := filepath.Join(q.opts.StateDir, "incoming")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", 0, fmt.Errorf("receive the sample: %w", err)
	}
	f, err := os.CreateTemp(dir, "sample-*")
	if err != nil {
		return nil, "", 0, fmt.Errorf("receive the sample: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, "", 0, fmt.Errorf("receive the sample: %w", err)
	}
	return f, hex.EncodeToString(h.Sum(nil)), n, nil
}

// jobParams is the job of a task's analysis with a profile: the
// submission's (attempt 0), unique by its arguments, or one that takes
// the analysis over (the analysis's attempt), which its analysis row alone
// makes the owner: a job it superseded is no twin to refuse it for.
func (q *Queue) jobParams(t *Task, profile string, attempt int) river.InsertManyParams {
	queue := queueName(profile)
	if t.VM != "" {
		queue = vmQueueName(t.VM)
	}
	opts := &river.InsertOpts{Queue: queue, Priority: t.Priority, MaxAttempts: q.opts.MaxAttempts}
	if attempt == 0 {
		opts.UniqueOpts = river.UniqueOpts{ByArgs: true}
	}
	return river.InsertManyParams{Args: analysisArgs{Task: t.ID, Profile: profile, Attempt: attempt}, InsertOpts: opts}
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
		return nil, inputErrorf("unknown_profile", "no profile is configured: add a [profiles.NAME] table to the service's config.toml and restart it")
	}
	if req.Priority == 0 {
		req.Priority = DefaultPriority
	}
	if req.Priority < 1 || req.Priority > 4 {
		return nil, inputErrorf("bad_priority", "priority %d: want 1 (first) to 4 (last)", req.Priority)
	}
	return out, nil
}

// Task returns a task with its analyses and results so far and, once it
// has ended, its report.
func (q *Queue) Task(ctx context.Context, id string) (*Task, error) {
	t, err := q.db.task(ctx, q.db, id)
	if errors.Is(err, errNoTask) {
		return nil, noTask(id)
	}
	return t, err
}

// Tasks lists the latest tasks, newest first, only those in state if set;
// their analyses without results, their report left out.
func (q *Queue) Tasks(ctx context.Context, state string, limit int) ([]*Task, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	return q.db.tasks(ctx, state, limit)
}

// Cancel stops a task, in one transaction: its analyses are marked to be
// cancelled, and those whose jobs had not begun are cancelled with their
// jobs at once; a running one is stopped by its worker, which sees the
// mark, and records it cancelled, its VM cleaned.
func (q *Queue) Cancel(ctx context.Context, id string) (*Task, error) {
	// The task's jobs under way here stop at once, before any database
	// round trip (which may wait behind them on SQLite's one writer).
	stopped := q.cancelLocal(id)
	var final string
	err := q.db.inTx(ctx, func(tx *sql.Tx) error {
		t, err := q.db.task(ctx, tx, id)
		if errors.Is(err, errNoTask) {
			return noTask(id)
		}
		if err != nil {
			return err
		}
		if t.Final() {
			final = t.State
			return nil
		}
		if _, err := q.db.exec(ctx, tx, `UPDATE sandbox_analysis SET cancel_requested = 1 WHERE task_id = ? AND state NOT IN `+finalStates, id); err != nil {
			return err
		}
		rows, err := q.db.analyses(ctx, tx, id)
		if err != nil {
			return err
		}
		for _, a := range rows {
			if a.State != StateQueued {
				continue
			}
			row, err := q.client.JobCancelTx(ctx, tx, a.job)
			if errors.Is(err, rivertype.ErrNotFound) {
				row, err = nil, nil
			}
			if err != nil {
				return fmt.Errorf("cancel job %d: %w", a.job, err)
			}
			if row != nil && row.State == rivertype.JobStateRunning {
				continue // a worker has it: it sees the mark
			}
			if err := q.endWith(ctx, tx, id, a.job, engine.NotRun(a.Profile, engine.StepCancelled, "cancelled before it ran")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if final != "" {
		t, err := q.Task(ctx, id)
		if err != nil {
			return nil, err
		}
		if stopped > 0 && final == StateCancelled {
			return t, nil // ended by this very cancel, through its local jobs
		}
		return t, inputErrorf("already_finished", "task %s already ended (%s): there is nothing left to cancel", id, final)
	}
	q.cancelLocal(id)
	if err := q.completeTask(ctx, id); err != nil {
		q.log.Warn("the task is cancelled; its report is not written yet", "task", id, "error", err)
	}
	return q.Task(ctx, id)
}

// cancelLocal stops the task's jobs under way on this host at once, and
// says how many it stopped.
func (q *Queue) cancelLocal(task string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, j := range q.working {
		if j.task == task {
			j.cancel(river.ErrJobCancelledRemotely)
			n++
		}
	}
	return n
}

// endWith ends an analysis the job owns with r, within tx, and tells the
// observer. An analysis that another job owns, or that has ended, is left
// as it is.
func (q *Queue) endWith(ctx context.Context, tx querier, task string, job int64, r *engine.Result) error {
	ended, err := q.db.endAnalysis(ctx, tx, task, job, r)
	if err != nil {
		return fmt.Errorf("record the analysis of task %s with %s: %w", task, r.Profile, err)
	}
	if ended {
		if err := q.storeArtifacts(ctx, tx, task, r); err != nil {
			return err
		}
	}
	if ended && q.opts.OnResult != nil {
		q.opts.OnResult(r)
	}
	return nil
}

// completeTask ends a task whose every analysis has ended: its report is
// written first, in the task's directory, then the task is marked ended,
// once. A report that cannot be written leaves the task running (and is
// logged); the sweep tries again.
func (q *Queue) completeTask(ctx context.Context, id string) error {
	t, err := q.db.task(ctx, q.db, id)
	if err != nil || t.Final() {
		return err
	}
	rows, err := q.db.analyses(ctx, q.db, id)
	if err != nil {
		return err
	}
	var results []*engine.Result
	state := StateDone
	for _, a := range rows {
		if a.result == nil {
			return nil // an analysis has not ended
		}
		results = append(results, a.result)
		switch a.result.State {
		case engine.StepFailed:
			state = StateFailed
		case engine.StepCancelled:
			if state == StateDone {
				state = StateCancelled
			}
		}
	}
	// One caller ends the task: it claims the ending, writes the report,
	// then marks the task ended. The claim is this call's alone (the host
	// and the time it was made), so that the analysis's job and the sweep,
	// ending one task at once on one host, do not both write a report
	// with its own end time, one replacing the report the record holds.
	// A claim is let go when the report cannot be written, for the sweep
	// to try again; one whose caller died is taken over once it is older
	// than twice dead_after, or when its host starts again (Open).
	now := time.Now().UTC()
	token := now.UnixNano()
	claim, err := q.db.exec(ctx, q.db, `UPDATE sandbox_task SET ending_host = ?, ending_ns = ?
		WHERE id = ? AND finished_ns = 0 AND (ending_host = '' OR ending_ns < ?)`,
		q.opts.Host, token, id, now.Add(-2*q.opts.DeadAfter).UnixNano())
	if err != nil {
		return err
	}
	if n, _ := claim.RowsAffected(); n == 0 {
		return nil // another caller is ending it
	}
	release := func() {
		_, _ = q.db.exec(context.WithoutCancel(ctx), q.db, `UPDATE sandbox_task SET ending_host = '', ending_ns = 0
			WHERE id = ? AND ending_host = ? AND ending_ns = ?`, id, q.opts.Host, token)
	}
	rep := engine.NewReport(t.Sample, t.Created, now, results)
	if err := engine.WriteReport(q.taskDir(t), rep); err != nil {
		release()
		q.log.Error("cannot write a task's report; the task stays running until it is written", "task", id, "error", err)
		return err
	}
	data, err := json.Marshal(rep)
	if err != nil {
		release()
		return err
	}
	res, err := q.db.exec(ctx, q.db, `UPDATE sandbox_task SET state = ?, verdict = ?, report = ?, finished_ns = ?
		WHERE id = ? AND finished_ns = 0 AND ending_host = ? AND ending_ns = ?`,
		state, string(rep.Verdict), string(data), now.UnixNano(), id, q.opts.Host, token)
	if err != nil {
		release()
		return err
	}
	if n, _ := res.RowsAffected(); n == 1 {
		q.log.Info("task ended", "task", id, "state", state, "verdict", rep.Verdict)
	}
	return nil
}

// taskDir is where a task's artifacts and report go: each task in a
// directory of its own, so that two tasks of one sample never share one.
func (q *Queue) taskDir(t *Task) string {
	return filepath.Join(q.opts.OutDir, t.Sample.SHA256, t.ID)
}
