package queue_test

import (
	"context"
	"database/sql"
	"flag"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The fault matrix's cells spend their time waiting on the fake
	// hypervisor's timings and deadlines, not on a core.
	plugintest.WaitingParallel(16)
	code := m.Run()
	if migrated.dir != "" {
		os.RemoveAll(migrated.dir)
	}
	os.Exit(code)
}

// migrated is a SQLite queue migrated once per test process. Migrating
// River's tables and the queue's own costs a few hundred milliseconds of
// CPU under the race detector, and the fault matrix alone opens a queue
// per cell: a test whose queue starts empty copies this one instead. The
// migrations themselves are tested where they are the subject
// (promise_test.go's upgrades, and every PostgreSQL database).
var migrated struct {
	once sync.Once
	dir  string
	err  error
}

// useMigrated gives dir the migrated, empty queue database, unless it has
// one already (a host opened again, an upgrade's older file).
func useMigrated(t testing.TB, dir string) {
	t.Helper()
	dst := filepath.Join(dir, "queue.db")
	if _, err := os.Stat(dst); err == nil {
		return
	}
	migrated.once.Do(func() { migrated.dir, migrated.err = migrateTemplate() })
	require.NoError(t, migrated.err, "the migrated queue database the tests copy")
	data, err := os.ReadFile(filepath.Join(migrated.dir, "queue.db"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dst, data, 0o600))
}

// migrateTemplate opens and closes a queue of no VM in a directory of its
// own, and leaves no trace of its host in the file.
func migrateTemplate() (string, error) {
	dir, err := os.MkdirTemp("", "sandbox-queue-migrated-")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := lifecycle.New(lifecycle.Options{})
	pool, err := engine.NewPool(ctx, engine.New(engine.Options{Lifecycle: m}), nil, nil)
	if err != nil {
		return dir, err
	}
	q, err := queue.Open(ctx, queue.Options{StateDir: dir, Host: "template", Pool: pool, Lifecycle: m})
	if err != nil {
		return dir, err
	}
	q.Close()
	db, err := sql.Open("sqlite", filepath.Join(dir, "queue.db"))
	if err != nil {
		return dir, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "DELETE FROM sandbox_host"); err != nil {
		return dir, err
	}
	// One file, with nothing left in a write-ahead log beside it.
	_, err = db.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	return dir, err
}
