package queue

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
)

// The queue keeps, beside River's own tables, what River does not: the
// samples (in chunks), the tasks, one row per (task, profile) analysis
// with its state and the job that owns it, and the hosts' heartbeats.

// The states of a task.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateDone      = "done"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// finalStates are the states an analysis or a task ends in, as SQL.
const finalStates = `('done', 'failed', 'cancelled')`

// sampleChunk is how much of a sample one row holds: a sample is never
// whole in memory, not even while it is stored.
const sampleChunk = 1 << 20

// Task is one submitted sample and the analyses asked of it.
type Task struct {
	// ID names the task in the API.
	ID string `json:"id"`
	// Sample is the file: its name as uploaded, size and digest.
	Sample engine.Sample `json:"sample"`
	// Profiles are the analyses asked, one job each.
	Profiles []string `json:"profiles"`
	// VM, when set, pins every analysis to this VM.
	VM string `json:"vm,omitempty"`
	// Priority is 1 (first) to 4 (last).
	Priority int `json:"priority"`
	// State is queued, running, done, failed or cancelled.
	State string `json:"state"`
	// Verdict sums the results up once the task has ended.
	Verdict engine.Verdict `json:"verdict,omitempty"`
	// Created and Finished are when it was accepted and when its last
	// analysis ended.
	Created  time.Time  `json:"created"`
	Finished *time.Time `json:"finished,omitempty"`
	// Analyses are the task's analyses, one per profile in order, as they
	// stand: where each runs and its step, and the attempts lost.
	Analyses []Analysis `json:"analyses"`
	// Results are the analyses that have ended so far, with the host that
	// ran each.
	Results []HostResult `json:"results"`
	// Report is the sample's report once the task has ended.
	Report *engine.Report `json:"report,omitempty"`
}

// Analysis is one (task, profile) analysis as it stands.
type Analysis struct {
	// Profile names the analysis.
	Profile string `json:"profile"`
	// State is queued, running, done, failed or cancelled.
	State string `json:"state"`
	// Attempt counts the hosts that have taken it: 1, and one more for
	// each attempt lost with a dead host.
	Attempt int `json:"attempt"`
	// Host, VM and Step say where a running analysis is: its host, its VM
	// and the step it was last seen in.
	Host string `json:"host,omitempty"`
	VM   string `json:"vm,omitempty"`
	Step string `json:"step,omitempty"`
	// Lost are the attempts lost with hosts that died running them.
	Lost []LostAttempt `json:"lost_attempts,omitempty"`
}

// LostAttempt is an attempt of an analysis lost with its host.
type LostAttempt struct {
	Attempt int       `json:"attempt"`
	Host    string    `json:"host"`
	At      time.Time `json:"at"`
	Why     string    `json:"why"`
}

// HostResult is one analysis's result and the host that ran it.
type HostResult struct {
	Host string `json:"host"`
	*engine.Result
}

// Final reports whether the task has ended.
func (t *Task) Final() bool {
	return t.State == StateDone || t.State == StateFailed || t.State == StateCancelled
}

// newID is a task's identifier: random, URL-safe, short enough to type.
func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var errNoTask = errors.New("no such task")

// putSample stores a sample's bytes once per digest, reading r in chunks.
func (d *db) putSample(ctx context.Context, tx *sql.Tx, sha string, size int64, r io.Reader) error {
	res, err := d.exec(ctx, tx, `INSERT INTO sandbox_sample (sha256, size) VALUES (?, ?) ON CONFLICT (sha256) DO NOTHING`, sha, size)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil // stored already
	}
	buf := make([]byte, sampleChunk)
	for seq := 0; ; seq++ {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := d.exec(ctx, tx, `INSERT INTO sandbox_sample_chunk (sha256, seq, data) VALUES (?, ?, ?)`, sha, seq, buf[:n]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// copySample writes a stored sample's bytes to w, a chunk at a time.
func (d *db) copySample(ctx context.Context, sha string, w io.Writer) error {
	for seq := 0; ; seq++ {
		var data []byte
		err := d.queryRow(ctx, d, `SELECT data FROM sandbox_sample_chunk WHERE sha256 = ? AND seq = ?`, sha, seq).Scan(&data)
		if errors.Is(err, sql.ErrNoRows) {
			if seq == 0 {
				return fmt.Errorf("sample %s is not stored", sha)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
}

const taskColumns = `t.id, t.sha256, t.name, t.vm, t.priority, t.state, t.verdict, t.created_ns, t.finished_ns, t.report, COALESCE(s.size, 0)`

func scanTask(row interface{ Scan(...any) error }) (*Task, error) {
	var (
		t                 Task
		report, verdict   string
		created, finished int64
		size              int64
	)
	if err := row.Scan(&t.ID, &t.Sample.SHA256, &t.Sample.Name, &t.VM, &t.Priority, &t.State, &verdict, &created,
		&finished, &report, &size); err != nil {
		return nil, err
	}
	t.Sample.Size, t.Verdict = size, engine.Verdict(verdict)
	t.Created = time.Unix(0, created).UTC()
	if finished != 0 {
		f := time.Unix(0, finished).UTC()
		t.Finished = &f
	}
	if report != "" {
		t.Report = &engine.Report{}
		if err := json.Unmarshal([]byte(report), t.Report); err != nil {
			return nil, fmt.Errorf("task %s: report: %w", t.ID, err)
		}
	}
	t.Profiles, t.Analyses, t.Results = []string{}, []Analysis{}, []HostResult{}
	return &t, nil
}

// task reads one task with its analyses.
func (d *db) task(ctx context.Context, q querier, id string) (*Task, error) {
	t, err := scanTask(d.queryRow(ctx, q, `SELECT `+taskColumns+` FROM sandbox_task t
		LEFT JOIN sandbox_sample s ON s.sha256 = t.sha256 WHERE t.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoTask
	}
	if err != nil {
		return nil, err
	}
	rows, err := d.analyses(ctx, q, id)
	if err != nil {
		return nil, err
	}
	for _, a := range rows {
		t.Profiles = append(t.Profiles, a.Profile)
		t.Analyses = append(t.Analyses, a.Analysis)
		if a.result != nil {
			t.Results = append(t.Results, HostResult{Host: a.Host, Result: a.result})
		}
	}
	return t, nil
}

// tasks lists the latest tasks, newest first, in state if given, without
// their analyses' results.
func (d *db) tasks(ctx context.Context, state string, limit int) ([]*Task, error) {
	q := `SELECT ` + taskColumns + ` FROM sandbox_task t LEFT JOIN sandbox_sample s ON s.sha256 = t.sha256`
	var args []any
	if state != "" {
		q += ` WHERE t.state = ?`
		args = append(args, state)
	}
	q += ` ORDER BY t.created_ns DESC LIMIT ?`
	args = append(args, limit)
	rows, err := d.query(ctx, d, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Task
	byID := map[string]*Task{}
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
		byID[t.ID] = t
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if len(out) == 0 {
		return out, nil
	}
	// The profiles of those tasks, in one query.
	ids := make([]any, 0, len(out))
	for _, t := range out {
		ids = append(ids, t.ID)
	}
	prows, err := d.query(ctx, d, `SELECT task_id, profile, state, host, vm, step, attempt FROM sandbox_analysis
		WHERE task_id IN (?`+strings.Repeat(", ?", len(ids)-1)+`) ORDER BY task_id, position`, ids...)
	if err != nil {
		return nil, err
	}
	defer prows.Close()
	for prows.Next() {
		var id string
		var a Analysis
		if err := prows.Scan(&id, &a.Profile, &a.State, &a.Host, &a.VM, &a.Step, &a.Attempt); err != nil {
			return nil, err
		}
		t := byID[id]
		t.Profiles = append(t.Profiles, a.Profile)
		t.Analyses = append(t.Analyses, a)
	}
	return out, prows.Err()
}

// analysisRow is an analysis with what the queue keeps of it.
type analysisRow struct {
	Analysis
	task     string
	position int
	job      int64
	cancel   bool
	result   *engine.Result
}

// analyses reads a task's analyses in order.
func (d *db) analyses(ctx context.Context, q querier, task string) ([]analysisRow, error) {
	rows, err := d.query(ctx, q, `SELECT task_id, profile, position, state, job_id, attempt, host, vm, step, cancel_requested, lost, result
		FROM sandbox_analysis WHERE task_id = ? ORDER BY position`, task)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []analysisRow
	for rows.Next() {
		a, err := scanAnalysis(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

const analysisColumns = `task_id, profile, position, state, job_id, attempt, host, vm, step, cancel_requested, lost, result`

func scanAnalysis(row interface{ Scan(...any) error }) (analysisRow, error) {
	var a analysisRow
	var cancel int
	var lost, result string
	if err := row.Scan(&a.task, &a.Profile, &a.position, &a.State, &a.job, &a.Attempt, &a.Host, &a.VM, &a.Step, &cancel,
		&lost, &result); err != nil {
		return a, err
	}
	a.cancel = cancel != 0
	if lost != "" && lost != "[]" {
		if err := json.Unmarshal([]byte(lost), &a.Lost); err != nil {
			return a, fmt.Errorf("task %s, profile %s: lost attempts: %w", a.task, a.Profile, err)
		}
	}
	if result != "" {
		a.result = &engine.Result{}
		if err := json.Unmarshal([]byte(result), a.result); err != nil {
			return a, fmt.Errorf("task %s, profile %s: result: %w", a.task, a.Profile, err)
		}
	}
	return a, nil
}

// analysis reads one analysis.
func (d *db) analysis(ctx context.Context, q querier, task, profile string) (analysisRow, error) {
	return scanAnalysis(d.queryRow(ctx, q, `SELECT `+analysisColumns+` FROM sandbox_analysis WHERE task_id = ? AND profile = ?`, task, profile))
}

// endAnalysis records an analysis's result, if the job still owns it and
// it has not ended: the one way an analysis ends, so that it ends once.
// It reports whether it did.
func (d *db) endAnalysis(ctx context.Context, q querier, task string, job int64, r *engine.Result) (bool, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return false, err
	}
	now := time.Now().UnixNano()
	res, err := d.exec(ctx, q, `UPDATE sandbox_analysis SET state = ?, result = ?, vm = ?, step = ?, finished_ns = ?, updated_ns = ?
		WHERE task_id = ? AND profile = ? AND job_id = ? AND state NOT IN `+finalStates,
		string(r.State), string(data), r.VM, string(r.State), now, now, task, r.Profile, job)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// depth counts, per profile, the analyses not yet ended.
func (d *db) depth(ctx context.Context) (map[string]int, error) {
	rows, err := d.query(ctx, d, `SELECT profile, COUNT(*) FROM sandbox_analysis WHERE state NOT IN `+finalStates+` GROUP BY profile`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var p string
		var n int
		if err := rows.Scan(&p, &n); err != nil {
			return nil, err
		}
		out[p] = n
	}
	return out, rows.Err()
}

// countByState counts tasks in each state.
func (d *db) countByState(ctx context.Context) (map[string]int, error) {
	rows, err := d.query(ctx, d, `SELECT state, COUNT(*) FROM sandbox_task GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}
