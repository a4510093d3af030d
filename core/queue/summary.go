package queue

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
)

// Summary is a task as a list shows it: what was asked, where each
// analysis stands and how each ended, in brief. It is read without the
// report or any analysis's output, so that a list of many tasks costs
// little whatever their scanners printed.
type Summary struct {
	// ID, Sample, VM and Priority are what the submission asked.
	ID       string
	Sample   engine.Sample
	VM       string
	Priority int
	// State is the task's (a State constant); Verdict its verdict once
	// it has ended done.
	State   string
	Verdict engine.Verdict
	// Created is when it was accepted; Finished when it ended, if it has.
	Created  time.Time
	Finished *time.Time
	// Analyses are the task's analyses, one per profile in order.
	Analyses []Brief
}

// Brief is an analysis in a list: where it stands and, once it has
// ended, its verdict and what failed.
type Brief struct {
	Analysis
	// Verdict is the analysis's once it has ended done; FailedStep the
	// step it failed at, if it failed.
	Verdict    engine.Verdict
	FailedStep engine.Step
	// Error is the start of the result's error, at most BriefErrorLen
	// bytes.
	Error string
}

// BriefErrorLen bounds the error a Brief carries.
const BriefErrorLen = 300

// Summaries lists the latest tasks, newest first, only those in state if
// set, without their reports: two queries whatever the number of tasks,
// the few fields of each result read from its JSON by the database.
func (q *Queue) Summaries(ctx context.Context, state string, limit int) ([]*Summary, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	d := q.db
	query := `SELECT t.id, t.sha256, t.name, COALESCE(s.size, 0), t.vm, t.priority, t.state, t.verdict, t.created_ns, t.finished_ns
		FROM sandbox_task t LEFT JOIN sandbox_sample s ON s.sha256 = t.sha256`
	var args []any
	if state != "" {
		query += ` WHERE t.state = ?`
		args = append(args, state)
	}
	query += ` ORDER BY t.created_ns DESC LIMIT ?`
	args = append(args, limit)
	rows, err := d.query(ctx, d, query, args...)
	if err != nil {
		return nil, err
	}
	var out []*Summary
	byID := map[string]*Summary{}
	for rows.Next() {
		var (
			t                 Summary
			verdict           string
			created, finished int64
		)
		if err := rows.Scan(&t.ID, &t.Sample.SHA256, &t.Sample.Name, &t.Sample.Size, &t.VM, &t.Priority, &t.State, &verdict,
			&created, &finished); err != nil {
			rows.Close()
			return nil, err
		}
		t.Verdict = engine.Verdict(verdict)
		t.Created = time.Unix(0, created).UTC()
		if finished != 0 {
			f := time.Unix(0, finished).UTC()
			t.Finished = &f
		}
		out = append(out, &t)
		byID[t.ID] = &t
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(out) == 0 {
		return out, err
	}
	field := func(name string) string {
		if d.dialect == dialectPostgres {
			return `COALESCE(CASE WHEN result = '' THEN NULL ELSE (result::jsonb)->>'` + name + `' END, '')`
		}
		return `COALESCE(CASE WHEN result = '' THEN NULL ELSE json_extract(result, '$.` + name + `') END, '')`
	}
	ids := make([]any, len(out))
	for i, t := range out {
		ids[i] = t.ID
	}
	rows, err = d.query(ctx, d, fmt.Sprintf(`SELECT task_id, profile, state, host, vm, step, attempt, %s, %s, substr(%s, 1, %d)
		FROM sandbox_analysis WHERE task_id IN (?`+strings.Repeat(", ?", len(ids)-1)+`) ORDER BY task_id, position`,
		field("verdict"), field("failed_step"), field("error"), BriefErrorLen), ids...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var b Brief
		if err := rows.Scan(&id, &b.Profile, &b.State, &b.Host, &b.VM, &b.Step, &b.Attempt, &b.Verdict, &b.FailedStep, &b.Error); err != nil {
			return nil, err
		}
		if t := byID[id]; t != nil {
			t.Analyses = append(t.Analyses, b)
		}
	}
	return out, rows.Err()
}
