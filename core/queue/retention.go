package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/config"
)

// Retention: the samples and artifacts of a task that ended more than
// Options.Retention ago are removed, from the database and from the disk
// of every host (each host removes its own task directories); the task,
// its results and its report stay, marked pruned. A sample another task
// still needs stays.

// pruneEvery is how often each host prunes; pruneBatch bounds the tasks
// one transaction prunes.
const (
	pruneEvery = 10 * time.Minute
	pruneBatch = 500
)

// Pruned counts what a pruning removed.
type Pruned struct {
	// Tasks had their sample and artifacts removed.
	Tasks int
	// Samples and Artifacts are the digests whose bytes left the database.
	Samples, Artifacts int
	// Dirs are the task directories removed from this host's disk.
	Dirs int
}

func (q *Queue) retention() time.Duration {
	if q.opts.Retention > 0 {
		return q.opts.Retention
	}
	return config.DefaultRetention
}

// prunes prunes now and then, until ctx ends.
func (q *Queue) prunes(ctx context.Context) {
	for {
		if p, err := q.Prune(ctx, time.Now().Add(-q.retention())); err != nil && ctx.Err() == nil {
			q.log.Warn("pruning old tasks' samples and artifacts did not finish; it goes on at the next", "error", err)
		} else if p.Tasks+p.Dirs > 0 {
			q.log.Info("pruned old tasks' samples and artifacts", "tasks", p.Tasks, "samples", p.Samples, "artifacts", p.Artifacts,
				"dirs", p.Dirs, "retention", q.retention())
		}
		// Hosts prune out of step with each other.
		d := pruneEvery - time.Duration(rand.Int64N(int64(pruneEvery/4)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// Prune removes the samples and artifacts of the tasks that ended before
// the given time: from the database, and the task directories on this
// host's disk.
func (q *Queue) Prune(ctx context.Context, endedBefore time.Time) (Pruned, error) {
	var p Pruned
	if err := q.db.check(); err != nil {
		return p, err
	}
	for {
		n, err := q.pruneBatch(ctx, endedBefore, &p)
		if err != nil {
			return p, err
		}
		if n < pruneBatch {
			break
		}
	}
	dirs, err := q.pruneDirs(ctx)
	p.Dirs = dirs
	return p, err
}

// pruneBatch marks up to pruneBatch tasks pruned and removes from the
// database what no task left unpruned needs, in one transaction.
func (q *Queue) pruneBatch(ctx context.Context, endedBefore time.Time, p *Pruned) (int, error) {
	n := 0
	err := q.db.inTx(ctx, func(tx *sql.Tx) error {
		if q.db.dialect == dialectPostgres {
			// A submission or a recorded result that brings a digest back
			// waits for this transaction, and this one for them: nothing
			// is removed that a task committed meanwhile needs.
			if _, err := tx.ExecContext(ctx, `LOCK TABLE sandbox_sample, sandbox_artifact IN SHARE ROW EXCLUSIVE MODE`); err != nil {
				return err
			}
		}
		rows, err := q.db.query(ctx, tx, `SELECT id FROM sandbox_task WHERE finished_ns <> 0 AND finished_ns < ? AND pruned_ns = 0
			ORDER BY finished_ns LIMIT ?`, endedBefore.UnixNano(), pruneBatch)
		if err != nil {
			return err
		}
		found, err := scanIDs(rows)
		if err != nil || len(found) == 0 {
			return err
		}
		ids := make([]any, len(found))
		for i, id := range found {
			ids[i] = id
		}
		n = len(ids)
		in := `(?` + strings.Repeat(", ?", len(ids)-1) + `)`
		if _, err := q.db.exec(ctx, tx, `UPDATE sandbox_task SET pruned_ns = ? WHERE id IN `+in,
			append([]any{time.Now().UnixNano()}, ids...)...); err != nil {
			return err
		}
		if _, err := q.db.exec(ctx, tx, `DELETE FROM sandbox_artifact WHERE task_id IN `+in, ids...); err != nil {
			return err
		}
		res, err := q.db.exec(ctx, tx, `DELETE FROM sandbox_artifact_chunk WHERE seq = 0 AND sha256 NOT IN
			(SELECT sha256 FROM sandbox_artifact WHERE stored <> 0)`)
		if err != nil {
			return err
		}
		artifacts, _ := res.RowsAffected()
		if _, err := q.db.exec(ctx, tx, `DELETE FROM sandbox_artifact_chunk WHERE sha256 NOT IN
			(SELECT sha256 FROM sandbox_artifact WHERE stored <> 0)`); err != nil {
			return err
		}
		unneeded := `SELECT s.sha256 FROM sandbox_sample s WHERE NOT EXISTS
			(SELECT 1 FROM sandbox_task t WHERE t.sha256 = s.sha256 AND t.pruned_ns = 0)`
		if _, err := q.db.exec(ctx, tx, `DELETE FROM sandbox_sample_chunk WHERE sha256 IN (`+unneeded+`)`); err != nil {
			return err
		}
		res, err = q.db.exec(ctx, tx, `DELETE FROM sandbox_sample WHERE sha256 IN (`+unneeded+`)`)
		if err != nil {
			return err
		}
		samples, _ := res.RowsAffected()
		p.Tasks += n
		p.Samples += int(samples)
		p.Artifacts += int(artifacts)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune old tasks: %w", err)
	}
	return n, nil
}

// taskDirName is a task's directory: its id.
var taskDirName = regexp.MustCompile(`^[0-9a-f]{20}$`)

// pruneDirs removes, from this host's out_dir, the directories of the
// tasks marked pruned: OUT_DIR/SHA256/TASK-ID, and OUT_DIR/SHA256 once
// empty. Nothing else in out_dir (the reports of `sandbox run`, say) is
// touched.
func (q *Queue) pruneDirs(ctx context.Context) (int, error) {
	if q.opts.OutDir == "" {
		return 0, nil
	}
	shas, err := os.ReadDir(q.opts.OutDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, s := range shas {
		if !s.IsDir() || len(s.Name()) != 64 {
			continue
		}
		parent := filepath.Join(q.opts.OutDir, s.Name())
		tasks, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		var ids []any
		for _, t := range tasks {
			if t.IsDir() && taskDirName.MatchString(t.Name()) {
				ids = append(ids, t.Name())
			}
		}
		if len(ids) == 0 {
			continue
		}
		rows, err := q.db.query(ctx, q.db, `SELECT id FROM sandbox_task WHERE pruned_ns <> 0 AND sha256 = ? AND id IN (?`+
			strings.Repeat(", ?", len(ids)-1)+`)`, append([]any{s.Name()}, ids...)...)
		if err != nil {
			return removed, err
		}
		gone, err := scanIDs(rows)
		if err != nil {
			return removed, err
		}
		for _, id := range gone {
			if err := os.RemoveAll(filepath.Join(parent, id)); err != nil {
				q.log.Warn("cannot remove a pruned task's directory", "dir", filepath.Join(parent, id), "error", err)
				continue
			}
			removed++
		}
		_ = os.Remove(parent) // only once empty
	}
	return removed, nil
}

// scanIDs reads a one-column result of strings and closes it.
func scanIDs(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
