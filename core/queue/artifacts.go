package queue

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
)

// A task's artifacts are brought back to the disk of the host that ran
// it. So that any host of a deployment can serve them, those of at most
// Options.ArtifactLimit bytes are also kept in the database, in chunks,
// once per digest, in the transaction that records the analysis's
// result; a larger one stays on its host's disk alone, and only that host
// serves it.

// StoredArtifact is an artifact of a task as the queue knows it.
type StoredArtifact struct {
	// Task and Profile name the analysis that brought it back.
	Task    string
	Profile string
	// Name is the artifact's file name, unique among the analysis's
	// artifacts, by which the API serves it.
	Name string
	// Path is its path in the result, relative to the task's directory.
	Path string
	// GuestPath is where the guest had it.
	GuestPath string
	// Host brought it back and has it on disk.
	Host string
	// Size and SHA256 are the file's, as the analysis recorded them: a
	// download is checked against them.
	Size   int64
	SHA256 string
	// InDatabase says whether every host can serve it.
	InDatabase bool
}

// ErrArtifactElsewhere is an artifact that only another host has.
var ErrArtifactElsewhere = errors.New("the artifact is kept only on the host that ran the task")

// storeArtifacts records the artifacts of an analysis that has just
// ended, within the transaction that records its result: their bytes go
// into the database when they fit within the limit. A file that can no
// longer be read is recorded as kept on this host only, with a warning:
// the result stands.
func (q *Queue) storeArtifacts(ctx context.Context, tx querier, task string, r *engine.Result) error {
	if len(r.Artifacts) == 0 {
		return nil
	}
	var sha string
	if err := q.db.queryRow(ctx, tx, `SELECT sha256 FROM sandbox_task WHERE id = ?`, task).Scan(&sha); err != nil {
		return fmt.Errorf("artifacts of task %s: %w", task, err)
	}
	dir := q.taskDir(&Task{ID: task, Sample: engine.Sample{SHA256: sha}})
	for _, a := range r.Artifacts {
		if a.Error != "" || a.Path == "" {
			continue
		}
		stored := a.Size <= q.artifactLimit()
		if stored {
			err := q.putArtifact(ctx, tx, filepath.Join(dir, filepath.FromSlash(a.Path)), a)
			if errors.Is(err, errArtifactChanged) || errors.Is(err, os.ErrNotExist) {
				q.log.Warn("an artifact's file changed or went away before it was kept in the database; only this host has what is left of it",
					"task", task, "artifact", a.Path, "error", err)
				stored = false
			} else if err != nil {
				return fmt.Errorf("keep artifact %s of task %s: %w", a.Path, task, err)
			}
		}
		if _, err := q.db.exec(ctx, tx, `INSERT INTO sandbox_artifact (task_id, profile, name, path, guest_path, host, size, sha256, stored)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, profile, name) DO NOTHING`,
			task, r.Profile, path.Base(a.Path), a.Path, a.GuestPath, q.opts.Host, a.Size, a.SHA256, boolInt(stored)); err != nil {
			return fmt.Errorf("record artifact %s of task %s: %w", a.Path, task, err)
		}
	}
	return nil
}

func (q *Queue) artifactLimit() int64 {
	if q.opts.ArtifactLimit > 0 {
		return q.opts.ArtifactLimit
	}
	return config.DefaultArtifactLimit
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

var errArtifactChanged = errors.New("the file is not what the analysis brought back")

// putArtifact stores a file's bytes in chunks, once per digest, checking
// them against the digest the analysis recorded.
func (q *Queue) putArtifact(ctx context.Context, tx querier, file string, a engine.Artifact) error {
	var n int
	if err := q.db.queryRow(ctx, tx, `SELECT COUNT(*) FROM sandbox_artifact_chunk WHERE sha256 = ? AND seq = 0`, a.SHA256).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil // kept already, for another task
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, sampleChunk)
	var size int64
	for seq := 0; ; seq++ {
		k, err := io.ReadFull(f, buf)
		if k > 0 {
			h.Write(buf[:k])
			size += int64(k)
			if size > a.Size {
				return errArtifactChanged
			}
			if _, err := q.db.exec(ctx, tx, `INSERT INTO sandbox_artifact_chunk (sha256, seq, data) VALUES (?, ?, ?)
				ON CONFLICT (sha256, seq) DO NOTHING`, a.SHA256, seq, buf[:k]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if size != a.Size || hex.EncodeToString(h.Sum(nil)) != a.SHA256 {
		return errArtifactChanged
	}
	return nil
}

// Artifact finds an artifact of a task's analysis with profile by its
// file name (the last element of its path in the result).
func (q *Queue) Artifact(ctx context.Context, task, profile, name string) (*StoredArtifact, error) {
	a := StoredArtifact{Task: task, Profile: profile, Name: name}
	var stored int
	err := q.db.queryRow(ctx, q.db, `SELECT path, guest_path, host, size, sha256, stored FROM sandbox_artifact
		WHERE task_id = ? AND profile = ? AND name = ?`, task, profile, name).Scan(&a.Path, &a.GuestPath, &a.Host, &a.Size, &a.SHA256, &stored)
	if errors.Is(err, sql.ErrNoRows) {
		var pruned int64
		err := q.db.queryRow(ctx, q.db, `SELECT pruned_ns FROM sandbox_task WHERE id = ?`, task).Scan(&pruned)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return nil, noTask(task)
		case err != nil:
			return nil, err
		case pruned != 0:
			return nil, inputErrorf("not_found", "the artifacts of task %s were removed by the retention setting ([queue] retention); its results and report are kept", task)
		}
		return nil, inputErrorf("not_found", "task %s has no artifact %q from %s (yet): see its results' artifacts", task, name, profile)
	}
	if err != nil {
		return nil, err
	}
	a.InDatabase = stored != 0
	return &a, nil
}

// CopyArtifact writes an artifact's bytes to w: from the database, or,
// for one kept only on disk, from this host's disk if this host ran the
// task (else ErrArtifactElsewhere).
func (q *Queue) CopyArtifact(ctx context.Context, a *StoredArtifact, w io.Writer) error {
	if !a.InDatabase {
		if a.Host != q.opts.Host {
			return ErrArtifactElsewhere
		}
		var sha string
		if err := q.db.queryRow(ctx, q.db, `SELECT sha256 FROM sandbox_task WHERE id = ?`, a.Task).Scan(&sha); err != nil {
			return err
		}
		root, err := os.OpenRoot(q.taskDir(&Task{ID: a.Task, Sample: engine.Sample{SHA256: sha}}))
		if err != nil {
			return err
		}
		defer root.Close()
		f, err := root.Open(filepath.FromSlash(a.Path))
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, io.LimitReader(f, a.Size))
		return err
	}
	for seq := 0; ; seq++ {
		var data []byte
		err := q.db.queryRow(ctx, q.db, `SELECT data FROM sandbox_artifact_chunk WHERE sha256 = ? AND seq = ?`, a.SHA256, seq).Scan(&data)
		if errors.Is(err, sql.ErrNoRows) {
			if seq == 0 && a.Size > 0 {
				return fmt.Errorf("artifact %s of task %s is not in the database", a.Path, a.Task)
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
