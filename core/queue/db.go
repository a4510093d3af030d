package queue

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // PostgreSQL through database/sql, for River and the queue alike
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	_ "modernc.org/sqlite" // the embedded database, pure Go
)

// Both databases are reached through database/sql, with the same
// statements (only the placeholders differ), in one transaction type that
// River's drivers for both (riversqlite, riverdatabasesql) accept: a
// submission's sample, task, analyses and River jobs commit together.

const (
	dialectSQLite   = "sqlite"
	dialectPostgres = "postgres"
)

// db is the queue's database.
type db struct {
	*sql.DB
	dialect string
	// path is the SQLite file, watched for deletion; empty for PostgreSQL.
	path string
	// file is the SQLite file as it was opened.
	file os.FileInfo

	mu sync.Mutex
	// lost says why the database can no longer be trusted (its file was
	// deleted or replaced while in use); nil while it can.
	lost error
}

// isPostgres reports whether url names a PostgreSQL database.
func isPostgres(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// openDB connects to PostgreSQL at url, or, with an empty url, to the
// SQLite file queue.db in stateDir, created readable by its owner only.
func openDB(ctx context.Context, url, stateDir string) (*db, error) {
	if isPostgres(url) {
		conn, err := sql.Open("pgx", url)
		if err == nil {
			err = conn.PingContext(ctx)
		}
		if err != nil {
			if conn != nil {
				conn.Close()
			}
			return nil, fmt.Errorf("database %s: %w (is PostgreSQL running, and the URL's user, password and database right?)",
				Redact(url), err)
		}
		// database/sql keeps two idle connections by default: under a
		// burst of submissions the rest would be opened and closed each
		// time, a fork of a PostgreSQL backend apiece.
		conn.SetMaxOpenConns(32)
		conn.SetMaxIdleConns(32)
		conn.SetConnMaxIdleTime(5 * time.Minute)
		return &db{DB: conn, dialect: dialectPostgres}, nil
	}
	if url != "" {
		return nil, fmt.Errorf("database %q: want a postgres:// URL, or nothing for the embedded SQLite file", Redact(url))
	}
	path := filepath.Join(stateDir, "queue.db")
	// SQLite gives its -wal and -shm files the database file's mode: the
	// file is made 0600 before SQLite opens it, whatever the umask, and an
	// older one is brought to 0600.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", path, err)
	}
	err = f.Chmod(0o600)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", path, err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Chmod(path+suffix, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("queue database %s: %w", path+suffix, err)
		}
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", path, err)
	}
	conn, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return nil, fmt.Errorf("queue database %s: %w", path, err)
	}
	// SQLite runs one writer at a time; one connection serializes River's
	// and the queue's statements instead of failing them with SQLITE_BUSY.
	conn.SetMaxOpenConns(1)
	if err := conn.PingContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("queue database %s: %w", path, err)
	}
	return &db{DB: conn, dialect: dialectSQLite, path: path, file: info}, nil
}

// rebind turns ? placeholders into PostgreSQL's $1, $2...
func (d *db) rebind(q string) string {
	if d.dialect != dialectPostgres {
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

// querier is a database or a transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (d *db) exec(ctx context.Context, q querier, query string, args ...any) (sql.Result, error) {
	return q.ExecContext(ctx, d.rebind(query), args...)
}

func (d *db) query(ctx context.Context, q querier, query string, args ...any) (*sql.Rows, error) {
	return q.QueryContext(ctx, d.rebind(query), args...)
}

func (d *db) queryRow(ctx context.Context, q querier, query string, args ...any) *sql.Row {
	return q.QueryRowContext(ctx, d.rebind(query), args...)
}

// inTx runs fn in a transaction and commits it if fn succeeds.
func (d *db) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if err := d.check(); err != nil {
		return err
	}
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// ErrDatabaseLost is matched by the error of every call after the SQLite
// file was deleted or replaced under the running service.
var ErrDatabaseLost = errors.New("the queue's database file was deleted or replaced while in use")

// check says whether the database can still be trusted.
func (d *db) check() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lost
}

// watch checks the SQLite file every period until ctx ends: a file deleted
// or replaced under the service would take every task accepted from then
// on with it, so the database is marked lost at once.
func (d *db) watch(ctx context.Context, period time.Duration, log func(error)) {
	if d.path == "" {
		return
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, err := os.Stat(d.path)
		var why error
		switch {
		case errors.Is(err, os.ErrNotExist):
			why = fmt.Errorf("%w: %s is gone", ErrDatabaseLost, d.path)
		case err == nil && !os.SameFile(now, d.file):
			why = fmt.Errorf("%w: %s is another file now", ErrDatabaseLost, d.path)
		}
		if why != nil {
			d.mu.Lock()
			d.lost = fmt.Errorf("%w; restart the service to open the queue again (what was accepted into the lost file is lost with it)", why)
			d.mu.Unlock()
			log(d.lost)
			return
		}
	}
}

//go:embed migrations
var migrations embed.FS

// migrate brings the queue's own tables to the latest version, numbered
// SQL files per dialect run by goose; on PostgreSQL an advisory lock keeps
// hosts starting together from migrating at once. It returns the version.
func (d *db) migrate(ctx context.Context, log *slog.Logger) (int64, error) {
	sub, err := fs.Sub(migrations, "migrations/"+d.dialect)
	if err != nil {
		return 0, err
	}
	dialect := goose.DialectSQLite3
	var opts []goose.ProviderOption
	if d.dialect == dialectPostgres {
		dialect = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			return 0, err
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	opts = append(opts, goose.WithTableName("sandbox_migration"), goose.WithSlog(log), goose.WithDisableGlobalRegistry(true))
	p, err := goose.NewProvider(dialect, d.DB, sub, opts...)
	if err != nil {
		return 0, fmt.Errorf("queue migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return 0, fmt.Errorf("migrate the queue's tables: %w", err)
	}
	return p.GetDBVersion(ctx)
}

// Schema is the version of the queue's tables this sandbox writes: the
// number of the last migration.
func Schema() int64 {
	entries, _ := fs.ReadDir(migrations, "migrations/"+dialectSQLite)
	var last int64
	for _, e := range entries {
		if n, err := strconv.ParseInt(strings.SplitN(e.Name(), "_", 2)[0], 10, 64); err == nil && n > last {
			last = n
		}
	}
	return last
}

var keyValuePassword = regexp.MustCompile(`(?i)(password=)[^&\s]*`)

// Redact hides the password of a database URL, in its user information
// and in libpq's password= query form, for every message that prints it.
// It does not parse the URL: a password holding '/', '@' or '?' unescaped
// makes a URL that a parser reads wrong, and would leak through it.
func Redact(raw string) string {
	out := raw
	if scheme, rest, ok := strings.Cut(raw, "://"); ok {
		head, tail := rest, ""
		if q := strings.IndexByte(rest, '?'); q >= 0 {
			head, tail = rest[:q], rest[q:]
		}
		if at := strings.LastIndexByte(head, '@'); at >= 0 {
			if user, _, hasPassword := strings.Cut(head[:at], ":"); hasPassword {
				head = user + ":xxxxx" + head[at:]
			}
		}
		out = scheme + "://" + head + tail
	}
	return keyValuePassword.ReplaceAllString(out, "${1}xxxxx")
}
