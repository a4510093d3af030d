package queue

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
)

// The queue keeps, beside River's own tables, what River does not: the
// samples, the tasks submitted and each task's results. Both databases
// are reached through database/sql, with the same statements; only the
// column types and the placeholders differ.

const (
	dialectSQLite   = "sqlite"
	dialectPostgres = "postgres"
)

func schema(dialect string) []string {
	blob, integer := "BLOB", "INTEGER"
	if dialect == dialectPostgres {
		blob, integer = "BYTEA", "BIGINT"
	}
	return []string{
		`CREATE TABLE IF NOT EXISTS sandbox_sample (
			sha256 TEXT PRIMARY KEY,
			size ` + integer + ` NOT NULL,
			data ` + blob + ` NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS sandbox_task (
			id TEXT PRIMARY KEY,
			sha256 TEXT NOT NULL,
			name TEXT NOT NULL,
			profiles TEXT NOT NULL,
			vm TEXT NOT NULL DEFAULT '',
			priority ` + integer + ` NOT NULL,
			state TEXT NOT NULL,
			verdict TEXT NOT NULL DEFAULT '',
			jobs TEXT NOT NULL DEFAULT '',
			cancel_requested ` + integer + ` NOT NULL DEFAULT 0,
			created_ns ` + integer + ` NOT NULL,
			finished_ns ` + integer + ` NOT NULL DEFAULT 0,
			report TEXT NOT NULL DEFAULT '')`,
		`CREATE INDEX IF NOT EXISTS sandbox_task_created ON sandbox_task (created_ns)`,
		`CREATE INDEX IF NOT EXISTS sandbox_task_state ON sandbox_task (state)`,
		`CREATE TABLE IF NOT EXISTS sandbox_result (
			task_id TEXT NOT NULL,
			profile TEXT NOT NULL,
			host TEXT NOT NULL,
			result TEXT NOT NULL,
			PRIMARY KEY (task_id, profile))`,
	}
}

// The states of a task.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateDone      = "done"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

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
	// Results are the analyses that have ended so far, with the host that
	// ran each.
	Results []HostResult `json:"results"`
	// Report is the sample's report once the task has ended.
	Report *engine.Report `json:"report,omitempty"`

	jobs []int64
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

// store is the queue's own tables.
type store struct {
	db      *sql.DB
	dialect string
}

// rebind turns ? placeholders into PostgreSQL's $1, $2...
func (s *store) rebind(q string) string {
	if s.dialect != dialectPostgres {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *store) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return s.db.ExecContext(ctx, s.rebind(q), args...)
}

func (s *store) migrate(ctx context.Context) error {
	for _, stmt := range schema(s.dialect) {
		if _, err := s.db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("create the queue's tables: %w", err)
		}
	}
	return nil
}

// newID is a task's identifier: random, URL-safe, short enough to type.
func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// saveSample stores the sample's bytes once per digest.
func (s *store) saveSample(ctx context.Context, sha string, data []byte) error {
	_, err := s.exec(ctx, `INSERT INTO sandbox_sample (sha256, size, data) VALUES (?, ?, ?)
		ON CONFLICT (sha256) DO NOTHING`, sha, len(data), data)
	return err
}

func (s *store) sampleData(ctx context.Context, sha string) ([]byte, error) {
	var data []byte
	err := s.db.QueryRowContext(ctx, s.rebind(`SELECT data FROM sandbox_sample WHERE sha256 = ?`), sha).Scan(&data)
	return data, err
}

func (s *store) insertTask(ctx context.Context, t *Task) error {
	profiles, _ := json.Marshal(t.Profiles)
	_, err := s.exec(ctx, `INSERT INTO sandbox_task (id, sha256, name, profiles, vm, priority, state, created_ns)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, t.ID, t.Sample.SHA256, t.Sample.Name, string(profiles), t.VM, t.Priority,
		StateQueued, t.Created.UnixNano())
	return err
}

func (s *store) setJobs(ctx context.Context, id string, jobs []int64) error {
	data, _ := json.Marshal(jobs)
	_, err := s.exec(ctx, `UPDATE sandbox_task SET jobs = ? WHERE id = ?`, string(data), id)
	return err
}

// requestCancel records that a task is to be cancelled, for the workers
// that start its jobs from now on.
func (s *store) requestCancel(ctx context.Context, id string) error {
	_, err := s.exec(ctx, `UPDATE sandbox_task SET cancel_requested = 1 WHERE id = ?`, id)
	return err
}

// cancelRequested reports whether a task is to be cancelled.
func (s *store) cancelRequested(ctx context.Context, id string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.rebind(`SELECT cancel_requested FROM sandbox_task WHERE id = ?`), id).Scan(&n)
	return n != 0, err
}

// markRunning moves a queued task to running.
func (s *store) markRunning(ctx context.Context, id string) error {
	_, err := s.exec(ctx, `UPDATE sandbox_task SET state = ? WHERE id = ? AND state = ?`, StateRunning, id, StateQueued)
	return err
}

var errNoTask = errors.New("no such task")

const taskColumns = `id, sha256, name, profiles, vm, priority, state, verdict, jobs, created_ns, finished_ns, report`

func (s *store) scanTask(row interface{ Scan(...any) error }) (*Task, error) {
	var (
		t                 Task
		profiles, jobs    string
		report, verdict   string
		created, finished int64
		sha, name, vm, st string
		priority          int
	)
	if err := row.Scan(&t.ID, &sha, &name, &profiles, &vm, &priority, &st, &verdict, &jobs, &created, &finished, &report); err != nil {
		return nil, err
	}
	t.Sample = engine.Sample{Name: name, SHA256: sha}
	t.VM, t.Priority, t.State, t.Verdict = vm, priority, st, engine.Verdict(verdict)
	t.Created = time.Unix(0, created).UTC()
	if finished != 0 {
		f := time.Unix(0, finished).UTC()
		t.Finished = &f
	}
	if err := json.Unmarshal([]byte(profiles), &t.Profiles); err != nil {
		return nil, fmt.Errorf("task %s: profiles: %w", t.ID, err)
	}
	if jobs != "" {
		if err := json.Unmarshal([]byte(jobs), &t.jobs); err != nil {
			return nil, fmt.Errorf("task %s: jobs: %w", t.ID, err)
		}
	}
	if report != "" {
		t.Report = &engine.Report{}
		if err := json.Unmarshal([]byte(report), t.Report); err != nil {
			return nil, fmt.Errorf("task %s: report: %w", t.ID, err)
		}
		t.Sample = t.Report.Sample
	}
	return &t, nil
}

// task reads one task with its results so far.
func (s *store) task(ctx context.Context, id string) (*Task, error) {
	t, err := s.scanTask(s.db.QueryRowContext(ctx, s.rebind(`SELECT `+taskColumns+` FROM sandbox_task WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoTask
	}
	if err != nil {
		return nil, err
	}
	if t.Results, err = s.results(ctx, id); err != nil {
		return nil, err
	}
	if t.Sample.Size == 0 {
		_ = s.db.QueryRowContext(ctx, s.rebind(`SELECT size FROM sandbox_sample WHERE sha256 = ?`), t.Sample.SHA256).Scan(&t.Sample.Size)
	}
	return t, nil
}

// tasks lists the latest tasks, newest first, in state if given.
func (s *store) tasks(ctx context.Context, state string, limit int) ([]*Task, error) {
	q := `SELECT ` + taskColumns + ` FROM sandbox_task`
	var args []any
	if state != "" {
		q += ` WHERE state = ?`
		args = append(args, state)
	}
	q += ` ORDER BY created_ns DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.rebind(q), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Task
	for rows.Next() {
		t, err := s.scanTask(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// countByState counts tasks in each state.
func (s *store) countByState(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM sandbox_task GROUP BY state`)
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

func (s *store) results(ctx context.Context, id string) ([]HostResult, error) {
	rows, err := s.db.QueryContext(ctx, s.rebind(`SELECT host, result FROM sandbox_result WHERE task_id = ? ORDER BY profile`), id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []HostResult{}
	for rows.Next() {
		var host, data string
		if err := rows.Scan(&host, &data); err != nil {
			return nil, err
		}
		var r engine.Result
		if err := json.Unmarshal([]byte(data), &r); err != nil {
			return nil, fmt.Errorf("task %s: result: %w", id, err)
		}
		out = append(out, HostResult{Host: host, Result: &r})
	}
	return out, rows.Err()
}

// hasResult reports whether the task's analysis with profile has ended.
func (s *store) hasResult(ctx context.Context, id, profile string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.rebind(`SELECT COUNT(*) FROM sandbox_result WHERE task_id = ? AND profile = ?`), id, profile).Scan(&n)
	return n > 0, err
}

// saveResult records an analysis's result; the first one recorded stands.
func (s *store) saveResult(ctx context.Context, id, host string, r *engine.Result) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO sandbox_result (task_id, profile, host, result) VALUES (?, ?, ?, ?)
		ON CONFLICT (task_id, profile) DO NOTHING`, id, r.Profile, host, string(data))
	return err
}

// finish ends a task whose every analysis has a result, once: it returns
// the task and true only to the caller that ended it.
func (s *store) finish(ctx context.Context, id string) (*Task, bool, error) {
	t, err := s.task(ctx, id)
	if err != nil || t.Final() || len(t.Results) < len(t.Profiles) {
		return t, false, err
	}
	var results []*engine.Result
	state := StateDone
	for _, p := range t.Profiles {
		for _, r := range t.Results {
			if r.Profile == p {
				results = append(results, r.Result)
				switch r.State {
				case engine.StepFailed:
					state = StateFailed
				case engine.StepCancelled:
					if state == StateDone {
						state = StateCancelled
					}
				}
			}
		}
	}
	now := time.Now().UTC()
	rep := engine.NewReport(t.Sample, t.Created, now, results)
	data, err := json.Marshal(rep)
	if err != nil {
		return nil, false, err
	}
	res, err := s.exec(ctx, `UPDATE sandbox_task SET state = ?, verdict = ?, report = ?, finished_ns = ?
		WHERE id = ? AND finished_ns = 0`, state, string(rep.Verdict), string(data), now.UnixNano(), id)
	if err != nil {
		return nil, false, err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return t, false, nil
	}
	t.State, t.Verdict, t.Report, t.Finished = state, rep.Verdict, rep, &now
	return t, true, nil
}

// depth counts, per profile, the analyses of unfinished tasks that have no
// result yet: the queue's depth.
func (s *store) depth(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, profiles FROM sandbox_task WHERE finished_ns = 0`)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for rows.Next() {
		var id, profiles string
		var list []string
		if err := rows.Scan(&id, &profiles); err != nil {
			rows.Close()
			return nil, err
		}
		if err := json.Unmarshal([]byte(profiles), &list); err != nil {
			rows.Close()
			return nil, fmt.Errorf("task %s: profiles: %w", id, err)
		}
		for _, p := range list {
			out[p]++
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// Less those that already ended.
	rows, err = s.db.QueryContext(ctx, `SELECT r.profile, COUNT(*) FROM sandbox_result r
		JOIN sandbox_task t ON t.id = r.task_id WHERE t.finished_ns = 0 GROUP BY r.profile`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var p string
		var n int
		if err := rows.Scan(&p, &n); err != nil {
			return nil, err
		}
		out[p] -= n
	}
	return out, rows.Err()
}
