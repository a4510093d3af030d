package queue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/sandboxhq/sandbox/core/engine"
)

// The sweep runs on every host, every few seconds, and ends whatever
// nothing else would: it is what makes "every accepted task ends exactly
// once" hold whatever dies, and when. Each of its steps changes a row only
// under the condition that makes the change right, so hosts sweeping at
// once do each thing once.

// errRaced is a takeover that found the analysis moved on meanwhile.
var errRaced = errors.New("the analysis moved on meanwhile")

const (
	// sweepEvery is the sweep's period at most; it is also never more
	// than a third of dead_after, so that a dead host's work moves within
	// dead_after and a third.
	sweepEvery = 5 * time.Second
	// settled is how long an analysis must have been left alone before
	// the sweep judges its job: a worker may be about to record it.
	settled = 10 * time.Second
	// forgetHost is how long a host's row outlives its last heartbeat:
	// until then the profiles it served are waited for, after it its row
	// goes, and with it the last claim that anything serves them.
	forgetHost = 24 * time.Hour
)

func (q *Queue) sweeps(ctx context.Context) {
	every := min(sweepEvery, heartbeatEvery(q.opts.DeadAfter))
	for {
		// Hosts sweep out of step with each other.
		d := every - time.Duration(rand.Int64N(int64(every/4)+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if err := q.sweep(ctx); err != nil && ctx.Err() == nil {
			q.log.Warn("the queue's sweep did not finish; it goes on at the next", "error", err)
		}
	}
}

// sweep takes over the analyses of dead hosts, ends analyses whose jobs
// ended without ending them, ends tasks whose analyses have all ended, and
// fails analyses that no host serves any more.
func (q *Queue) sweep(ctx context.Context) error {
	if err := q.db.check(); err != nil {
		return err
	}
	var errs []error
	if err := q.sweepDeadHosts(ctx); err != nil {
		errs = append(errs, fmt.Errorf("dead hosts: %w", err))
	}
	if err := q.sweepEndedJobs(ctx); err != nil {
		errs = append(errs, fmt.Errorf("ended jobs: %w", err))
	}
	if err := q.sweepUnserved(ctx); err != nil {
		errs = append(errs, fmt.Errorf("unserved profiles: %w", err))
	}
	if err := q.sweepEndedTasks(ctx); err != nil {
		errs = append(errs, fmt.Errorf("ended tasks: %w", err))
	}
	return errors.Join(errs...)
}

// sweepDeadHosts takes over the running analyses of every host whose
// heartbeat is older than dead_after, and of hosts with no heartbeat at
// all (an analysis a database from before heartbeats left running).
func (q *Queue) sweepDeadHosts(ctx context.Context) error {
	now := time.Now()
	rows, err := q.db.query(ctx, q.db, `SELECT DISTINCT a.host, COALESCE(h.heartbeat_ns, 0) FROM sandbox_analysis a
		LEFT JOIN sandbox_host h ON h.name = a.host
		WHERE a.state = 'running' AND a.host <> ? AND (h.name IS NULL OR h.heartbeat_ns < ?)`,
		q.opts.Host, now.Add(-q.opts.DeadAfter).UnixNano())
	if err != nil {
		return err
	}
	type dead struct {
		host string
		beat int64
	}
	var hosts []dead
	for rows.Next() {
		var d dead
		if err := rows.Scan(&d.host, &d.beat); err != nil {
			rows.Close()
			return err
		}
		hosts = append(hosts, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, d := range hosts {
		why := "no host of that name heartbeats"
		if d.beat != 0 {
			why = fmt.Sprintf("its last heartbeat was at %s, over dead_after (%s) ago", time.Unix(0, d.beat).UTC().Format(time.RFC3339),
				q.opts.DeadAfter)
		}
		if err := q.takeOver(ctx, d.host, why); err != nil {
			return err
		}
	}
	_, err = q.db.exec(ctx, q.db, `DELETE FROM sandbox_host WHERE heartbeat_ns < ?`, now.Add(-forgetHost).UnixNano())
	return err
}

// sweepEndedJobs ends the analyses whose River jobs ended without ending
// them: discarded by River (their last attempt failed in a way the error
// handler never saw, or River's rescuer gave up on them), cancelled, or
// completed by a worker that could not record the result. It also takes
// over an analysis whose job River handed to a host that died (or
// restarted) before its worker could claim the analysis: River thinks the
// job running, the analysis waits for it, and nothing else would move it.
func (q *Queue) sweepEndedJobs(ctx context.Context) error {
	rows, err := q.db.query(ctx, q.db, `SELECT task_id, profile, job_id, state FROM sandbox_analysis
		WHERE state NOT IN `+finalStates+` AND updated_ns < ? ORDER BY updated_ns LIMIT 500`, time.Now().Add(-settled).UnixNano())
	if err != nil {
		return err
	}
	type open struct {
		task, profile, state string
		job                  int64
	}
	byJob := map[int64]open{}
	var ids []int64
	for rows.Next() {
		var o open
		if err := rows.Scan(&o.task, &o.profile, &o.job, &o.state); err != nil {
			rows.Close()
			return err
		}
		byJob[o.job] = o
		ids = append(ids, o.job)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(ids) == 0 {
		return err
	}
	found := map[int64]*rivertype.JobRow{}
	res, err := q.client.JobList(ctx, river.NewJobListParams().IDs(ids...).First(len(ids)))
	if err != nil {
		return err
	}
	for _, j := range res.Jobs {
		found[j.ID] = j
	}
	var hosts map[string]Host
	for _, id := range ids {
		o := byJob[id]
		j := found[id]
		if j != nil && j.State == rivertype.JobStateRunning && o.state == StateQueued {
			if hosts == nil {
				list, err := q.Hosts(ctx)
				if err != nil {
					return err
				}
				hosts = map[string]Host{}
				for _, h := range list {
					hosts[h.Name] = h
				}
			}
			if why := lostBeforeClaim(j, hosts); why != "" {
				a, err := q.db.analysis(ctx, q.db, o.task, o.profile)
				if err != nil {
					return err
				}
				if err := q.takeOverOne(ctx, a, why); err != nil && !errors.Is(err, errRaced) {
					return err
				}
			}
			continue
		}
		var r *engine.Result
		switch {
		case j == nil:
			r = engine.NotRun(o.profile, engine.StepFailed, fmt.Sprintf("its job %d is gone from the queue", id))
		case j.State == rivertype.JobStateDiscarded:
			r = engine.NotRun(o.profile, engine.StepFailed, fmt.Sprintf("its job was given up after %d attempts: %s", j.Attempt, lastError(j)))
		case j.State == rivertype.JobStateCancelled:
			r = engine.NotRun(o.profile, engine.StepCancelled, "its job was cancelled")
		case j.State == rivertype.JobStateCompleted:
			r = engine.NotRun(o.profile, engine.StepFailed, "its job ended without recording a result")
		default:
			continue
		}
		q.log.Error("an analysis's job ended without ending it; the analysis is ended now", "task", o.task, "profile", o.profile,
			"job", id, "state", r.State, "why", r.Error)
		if err := q.db.inTx(ctx, func(tx *sql.Tx) error { return q.endWith(ctx, tx, o.task, id, r) }); err != nil {
			return err
		}
	}
	return nil
}

// lostBeforeClaim says why a job River thinks running will never claim its
// analysis: the host it went to is dead, or has restarted since; "" when
// it may yet.
func lostBeforeClaim(j *rivertype.JobRow, hosts map[string]Host) string {
	if len(j.AttemptedBy) == 0 || j.AttemptedAt == nil {
		return ""
	}
	name := j.AttemptedBy[len(j.AttemptedBy)-1]
	h, ok := hosts[name]
	switch {
	case !ok:
		return fmt.Sprintf("its job went to host %s, which no longer heartbeats, before the analysis began", name)
	case !h.Alive:
		return fmt.Sprintf("its job went to host %s, which died before the analysis began", name)
	case h.Started.After(*j.AttemptedAt):
		return fmt.Sprintf("its job went to host %s, which restarted before the analysis began", name)
	}
	return ""
}

func lastError(j *rivertype.JobRow) string {
	if len(j.Errors) == 0 {
		return "no error recorded"
	}
	return oneLine(j.Errors[len(j.Errors)-1].Error)
}

// sweepUnserved fails the queued analyses of profiles that no host serves
// (removed from every host's configuration), and of tasks pinned to a VM
// no host has: no job of theirs would ever be worked. A host that is
// down still counts, for forgetHost after its last heartbeat.
func (q *Queue) sweepUnserved(ctx context.Context) error {
	hosts, err := q.Hosts(ctx)
	if err != nil {
		return err
	}
	profiles, vms := map[string]bool{}, map[string]bool{}
	for _, h := range hosts {
		for _, p := range h.Profiles {
			profiles[p] = true
		}
		for _, vm := range h.VMs {
			vms[vm] = true
		}
	}
	grace := time.Now().Add(-2 * q.opts.DeadAfter).UnixNano()
	rows, err := q.db.query(ctx, q.db, `SELECT a.task_id, a.profile, a.job_id, t.vm FROM sandbox_analysis a
		JOIN sandbox_task t ON t.id = a.task_id WHERE a.state = 'queued' AND a.updated_ns < ?`, grace)
	if err != nil {
		return err
	}
	type orphan struct {
		task, profile, why string
		job                int64
	}
	var orphans []orphan
	for rows.Next() {
		var o orphan
		var vm string
		if err := rows.Scan(&o.task, &o.profile, &o.job, &vm); err != nil {
			rows.Close()
			return err
		}
		switch {
		case !profiles[o.profile]:
			known := slices.Sorted(maps.Keys(profiles))
			o.why = fmt.Sprintf("no host serves profile %s any more (they serve: %s); add it back to a host's configuration "+
				"and submit the sample again", o.profile, strings.Join(known, ", "))
		case vm != "" && !vms[vm]:
			o.why = fmt.Sprintf("no host has VM %s, which the task is pinned to", vm)
		default:
			continue
		}
		orphans = append(orphans, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, o := range orphans {
		q.log.Error("an analysis no host can run is failed", "task", o.task, "profile", o.profile, "why", o.why)
		err := q.db.inTx(ctx, func(tx *sql.Tx) error {
			if _, err := q.client.JobCancelTx(ctx, tx, o.job); err != nil && !errors.Is(err, rivertype.ErrNotFound) {
				return err
			}
			return q.endWith(ctx, tx, o.task, o.job, engine.NotRun(o.profile, engine.StepFailed, o.why))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// sweepEndedTasks ends the tasks whose analyses have all ended: those whose
// last analysis's worker died before it could end the task, or whose
// report could not be written then.
func (q *Queue) sweepEndedTasks(ctx context.Context) error {
	rows, err := q.db.query(ctx, q.db, `SELECT t.id FROM sandbox_task t WHERE t.finished_ns = 0 AND NOT EXISTS (
		SELECT 1 FROM sandbox_analysis a WHERE a.task_id = t.id AND a.state NOT IN `+finalStates+`) LIMIT 500`)
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
	if err := rows.Err(); err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := q.completeTask(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// decodeArgs reads a job's arguments.
func decodeArgs(j *rivertype.JobRow) (analysisArgs, error) {
	var a analysisArgs
	err := json.Unmarshal(j.EncodedArgs, &a)
	return a, err
}
