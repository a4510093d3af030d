package queue

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Host is one host sharing the queue, as its heartbeats tell.
type Host struct {
	// Name is the host's name.
	Name string `json:"name"`
	// Started is when its process opened the queue; Heartbeat its last
	// sign of life.
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"`
	// Alive is false once the heartbeat is older than dead_after: the
	// others have taken its running analyses over.
	Alive bool `json:"alive"`
	// Profiles and VMs are what it serves.
	Profiles []string `json:"profiles"`
	VMs      []string `json:"vms"`
}

// heartbeatEvery is how often a host says it is alive, for a dead_after
// bound: three times within it.
func heartbeatEvery(deadAfter time.Duration) time.Duration { return deadAfter / 3 }

// heartbeat records that this host is alive, with what it serves.
func (q *Queue) heartbeat(ctx context.Context) error {
	var profiles []string
	for _, p := range slices.Sorted(maps.Keys(q.pool.Profiles())) {
		if len(q.pool.Serves(p)) > 0 {
			profiles = append(profiles, p)
		}
	}
	vms := slices.Sorted(maps.Keys(q.pool.VMs()))
	pj, _ := json.Marshal(append([]string{}, profiles...))
	vj, _ := json.Marshal(append([]string{}, vms...))
	now := time.Now().UnixNano()
	_, err := q.db.exec(ctx, q.db, `INSERT INTO sandbox_host (name, started_ns, heartbeat_ns, profiles, vms) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET heartbeat_ns = excluded.heartbeat_ns, profiles = excluded.profiles, vms = excluded.vms,
		started_ns = CASE WHEN sandbox_host.started_ns < ? THEN ? ELSE sandbox_host.started_ns END`,
		q.opts.Host, q.started.UnixNano(), now, string(pj), string(vj), q.started.UnixNano(), q.started.UnixNano())
	return err
}

// heartbeats says this host is alive until ctx ends.
func (q *Queue) heartbeats(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery(q.opts.DeadAfter))
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := q.heartbeat(ctx)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			q.log.Error("cannot record this host's heartbeat: past dead_after the other hosts take its analyses over",
				"dead_after", q.opts.DeadAfter, "error", err)
			failing = true
		case err == nil && failing:
			q.log.Warn("this host's heartbeat is recorded again")
			failing = false
		}
	}
}

// Hosts lists the hosts sharing the queue, with their liveness.
func (q *Queue) Hosts(ctx context.Context) ([]Host, error) {
	rows, err := q.db.query(ctx, q.db, `SELECT name, started_ns, heartbeat_ns, profiles, vms FROM sandbox_host ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	dead := time.Now().Add(-q.opts.DeadAfter)
	var out []Host
	for rows.Next() {
		var h Host
		var started, beat int64
		var profiles, vms string
		if err := rows.Scan(&h.Name, &started, &beat, &profiles, &vms); err != nil {
			return nil, err
		}
		h.Started, h.Heartbeat = time.Unix(0, started).UTC(), time.Unix(0, beat).UTC()
		h.Alive = h.Heartbeat.After(dead)
		if err := json.Unmarshal([]byte(profiles), &h.Profiles); err != nil {
			return nil, fmt.Errorf("host %s: profiles: %w", h.Name, err)
		}
		if err := json.Unmarshal([]byte(vms), &h.VMs); err != nil {
			return nil, fmt.Errorf("host %s: VMs: %w", h.Name, err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// takeOver puts the running analyses of a dead host back in the queue,
// each with a job of its own, at once: the lost attempt is recorded in
// the analysis (host, when, why), and the dead host's job, should it ever
// run or end, no longer owns the analysis. Only the running analyses of
// host are taken; one that moved on meanwhile is left to where it went.
func (q *Queue) takeOver(ctx context.Context, host, why string) error {
	rows, err := q.db.query(ctx, q.db, `SELECT `+analysisColumns+` FROM sandbox_analysis WHERE state = 'running' AND host = ?`, host)
	if err != nil {
		return fmt.Errorf("list the analyses of host %q: %w", host, err)
	}
	var lost []analysisRow
	for rows.Next() {
		a, err := scanAnalysis(rows)
		if err != nil {
			rows.Close()
			return err
		}
		lost = append(lost, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, a := range lost {
		if err := q.takeOverOne(ctx, a, why); err != nil && !errors.Is(err, errRaced) {
			return fmt.Errorf("take over task %s's analysis with %s: %w", a.task, a.Profile, err)
		}
	}
	return nil
}

func (q *Queue) takeOverOne(ctx context.Context, a analysisRow, why string) error {
	return q.db.inTx(ctx, func(tx *sql.Tx) error {
		t, err := q.db.task(ctx, tx, a.task)
		if err != nil {
			return err
		}
		// An analysis that had begun lost an attempt, recorded; one whose
		// job was lost before it began lost nothing but time.
		next, lost := a.Attempt, a.Lost
		if a.State == StateRunning {
			lost = append(lost, LostAttempt{Attempt: a.Attempt, Host: a.Host, At: time.Now().UTC(), Why: why})
			next++
		}
		res, err := q.client.InsertManyTx(ctx, tx, []river.InsertManyParams{q.jobParams(t, a.Profile, next)})
		if err != nil {
			return err
		}
		data, _ := json.Marshal(lost)
		upd, err := q.db.exec(ctx, tx, `UPDATE sandbox_analysis SET state = 'queued', job_id = ?, attempt = ?, host = '', vm = '',
			step = '', lost = ?, updated_ns = ? WHERE task_id = ? AND profile = ? AND job_id = ? AND state IN ('queued', 'running')`,
			res[0].Job.ID, next, string(data), time.Now().UnixNano(), a.task, a.Profile, a.job)
		if err != nil {
			return err
		}
		if n, _ := upd.RowsAffected(); n == 0 {
			// It moved on meanwhile (ended, or another host took it): the
			// transaction, and the job inserted, go back.
			return errRaced
		}
		// The old job is told to stop, for tidiness: it owns nothing now.
		if _, err := q.client.JobCancelTx(ctx, tx, a.job); err != nil && err != rivertype.ErrNotFound {
			return err
		}
		label := a.Host
		if label == "" {
			label = "(no live host)"
		}
		q.log.Warn("took over an analysis of a host that stopped", "task", a.task, "profile", a.Profile, "host", label,
			"attempt", next, "why", why)
		return nil
	})
}
