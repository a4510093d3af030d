package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
)

// Summary is a task as a list shows it: what was asked and how each
// analysis ended, in brief. It is read without the report or any
// analysis's output, so that a list of many tasks costs little whatever
// their scanners printed.
type Summary struct {
	ID       string
	Sample   engine.Sample
	Profiles []string
	VM       string
	Priority int
	State    string
	Verdict  engine.Verdict
	Created  time.Time
	Finished *time.Time
	// Analyses are the analyses that have ended, by profile.
	Analyses map[string]Brief
}

// Brief is an ended analysis in a list: where it ran and how it ended.
type Brief struct {
	Host       string
	VM         string
	State      engine.Step
	Verdict    engine.Verdict
	FailedStep engine.Step
	// Error is the start of the result's error, at most BriefErrorLen
	// bytes.
	Error string
}

// BriefErrorLen bounds the error a Brief carries.
const BriefErrorLen = 300

// Summaries lists the latest tasks, newest first, only those in state if
// set, without their reports.
func (q *Queue) Summaries(ctx context.Context, state string, limit int) ([]*Summary, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	s := q.store
	query := `SELECT t.id, t.sha256, t.name, COALESCE(m.size, 0), t.profiles, t.vm, t.priority, t.state, t.verdict,
		t.created_ns, t.finished_ns FROM sandbox_task t LEFT JOIN sandbox_sample m ON m.sha256 = t.sha256`
	var args []any
	if state != "" {
		query += ` WHERE t.state = ?`
		args = append(args, state)
	}
	query += ` ORDER BY t.created_ns DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.rebind(query), args...)
	if err != nil {
		return nil, err
	}
	var out []*Summary
	byID := map[string]*Summary{}
	for rows.Next() {
		var (
			t                 Summary
			profiles, verdict string
			created, finished int64
		)
		if err := rows.Scan(&t.ID, &t.Sample.SHA256, &t.Sample.Name, &t.Sample.Size, &profiles, &t.VM, &t.Priority,
			&t.State, &verdict, &created, &finished); err != nil {
			rows.Close()
			return nil, err
		}
		t.Verdict = engine.Verdict(verdict)
		t.Created = time.Unix(0, created).UTC()
		if finished != 0 {
			f := time.Unix(0, finished).UTC()
			t.Finished = &f
		}
		if err := json.Unmarshal([]byte(profiles), &t.Profiles); err != nil {
			rows.Close()
			return nil, fmt.Errorf("task %s: profiles: %w", t.ID, err)
		}
		t.Analyses = map[string]Brief{}
		out = append(out, &t)
		byID[t.ID] = &t
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(out) == 0 {
		return out, err
	}
	// Each result's few fields are read by the database from its JSON:
	// the output stays there.
	field := func(name string) string {
		if s.dialect == dialectPostgres {
			return `COALESCE((result::jsonb)->>'` + name + `', '')`
		}
		return `COALESCE(json_extract(result, '$.` + name + `'), '')`
	}
	errField := fmt.Sprintf("substr(%s, 1, %d)", field("error"), BriefErrorLen)
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(out)), ", ")
	ids := make([]any, len(out))
	for i, t := range out {
		ids[i] = t.ID
	}
	rows, err = s.db.QueryContext(ctx, s.rebind(`SELECT task_id, profile, host, `+field("vm")+`, `+field("state")+`, `+
		field("verdict")+`, `+field("failed_step")+`, `+errField+` FROM sandbox_result WHERE task_id IN (`+marks+`)`), ids...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id, profile string
		var b Brief
		if err := rows.Scan(&id, &profile, &b.Host, &b.VM, &b.State, &b.Verdict, &b.FailedStep, &b.Error); err != nil {
			return nil, err
		}
		if t := byID[id]; t != nil {
			t.Analyses[profile] = b
		}
	}
	return out, rows.Err()
}
