// Package statedir keeps what sandbox must remember across processes in a
// directory: the quarantine, and a lock file per VM so that two sandbox
// processes never operate on one VM at once. Everything is guarded by file
// locks (flock on Unix, LockFileEx on Windows), which the kernel releases
// when a process dies, so a crashed process never leaves a VM leased.
package statedir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"

	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// lockRetry is how often a lock held by another process is tried again.
const lockRetry = 10 * time.Millisecond

// Dir is a state directory.
type Dir struct {
	path  string
	local lifecycle.Leases
}

// Open creates the directory if needed (mode 0700: it says which VMs are
// in use and why some are not) and returns it.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(filepath.Join(path, "leases"), 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w (set state_dir in config.toml to a writable place)", path, err)
	}
	return &Dir{path: path, local: lifecycle.NewLocalLeases()}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// Leases serializes operations per VM across every process sharing the
// directory, and within this process.
func (d *Dir) Leases() lifecycle.Leases { return leases{d} }

type leases struct{ d *Dir }

func (l leases) Acquire(ctx context.Context, key string) (func(), error) {
	// Goroutines of this process queue on the in-process lease first, so
	// they are served in turn instead of polling the file lock together.
	releaseLocal, err := l.d.local.Acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	f := flock.New(filepath.Join(l.d.path, "leases", url.PathEscape(key)+".lock"))
	ok, err := f.TryLockContext(ctx, lockRetry)
	if err != nil || !ok {
		releaseLocal()
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("lease on %s: %w", key, err)
	}
	return func() {
		_ = f.Unlock()
		releaseLocal()
	}, nil
}

// Quarantine is the quarantine shared by every process using the
// directory, kept in quarantine.json.
func (d *Dir) Quarantine() lifecycle.Quarantine { return quarantine{d} }

type quarantine struct{ d *Dir }

func (q quarantine) file() string { return filepath.Join(q.d.path, "quarantine.json") }

// update runs f on the quarantine under the directory's lock and saves
// what f leaves, atomically.
func (q quarantine) update(ctx context.Context, f func(map[string]lifecycle.QuarantineEntry) bool) error {
	lock := flock.New(filepath.Join(q.d.path, "quarantine.lock"))
	ok, err := lock.TryLockContext(ctx, lockRetry)
	if err != nil || !ok {
		return fmt.Errorf("lock the quarantine: %w", errors.Join(err, ctx.Err()))
	}
	defer lock.Unlock()
	entries, err := q.read()
	if err != nil {
		return err
	}
	if !f(entries) {
		return nil
	}
	data, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(q.d.path, "quarantine-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), q.file())
}

func (q quarantine) read() (map[string]lifecycle.QuarantineEntry, error) {
	entries := map[string]lifecycle.QuarantineEntry{}
	data, err := os.ReadFile(q.file())
	if errors.Is(err, os.ErrNotExist) {
		return entries, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v); fix or delete it: every VM in it is back in service once it is gone", q.file(), err)
	}
	return entries, nil
}

// Mark implements lifecycle.Quarantine.
func (q quarantine) Mark(ctx context.Context, key, reason string) error {
	return q.update(ctx, func(m map[string]lifecycle.QuarantineEntry) bool {
		e, ok := m[key]
		if !ok {
			e.Since = time.Now().UTC()
		}
		e.Reason = reason
		m[key] = e
		return true
	})
}

// Clear implements lifecycle.Quarantine.
func (q quarantine) Clear(ctx context.Context, key string) error {
	return q.update(ctx, func(m map[string]lifecycle.QuarantineEntry) bool {
		if _, ok := m[key]; !ok {
			return false
		}
		delete(m, key)
		return true
	})
}

// Get implements lifecycle.Quarantine. Reads take no lock: the file is
// replaced atomically, so a reader sees the old or the new version whole.
func (q quarantine) Get(_ context.Context, key string) (lifecycle.QuarantineEntry, bool, error) {
	entries, err := q.read()
	if err != nil {
		return lifecycle.QuarantineEntry{}, false, err
	}
	e, ok := entries[key]
	return e, ok, nil
}

// List returns every quarantined VM by key.
func (d *Dir) List() (map[string]lifecycle.QuarantineEntry, error) {
	return quarantine{d}.read()
}
