package config

import (
	"fmt"
	"strings"
	"time"
)

// Engine is the [engine] table, resolved.
type Engine struct {
	// MaxStarting caps the VMs starting at once (from start until the guest
	// is ready): start storms slow every VM of a host.
	MaxStarting int
	// OutDir is where reports go, absolute.
	OutDir string
}

// DefaultMaxStarting is [engine] max_starting's default.
const DefaultMaxStarting = 2

type engineTable struct {
	MaxStarting int    `toml:"max_starting"`
	OutDir      string `toml:"out_dir"`
}

func (t engineTable) validate() (string, error) {
	if t.MaxStarting < 0 {
		return "max_starting", fmt.Errorf("must not be negative (0 means the default, %d)", DefaultMaxStarting)
	}
	return "", nil
}

// Server is the [server] table of `sandbox serve`, resolved: the API, the
// page and the metrics, and the limits that keep clients from holding the
// service's connections, memory or files.
type Server struct {
	// Listen is the address to serve on.
	Listen string
	// Token is the bearer token every /v1 call must carry: TokenEnv's
	// value, else the file's.
	Token string
	// MaxSampleSize bounds an upload, in bytes; never above
	// MaxSampleSizeLimit.
	MaxSampleSize int64
	// ReadTimeout bounds how long a client may take to send a request's
	// headers, and the whole request for every call but an upload; an
	// upload is cut when no byte of it has arrived for this long.
	ReadTimeout time.Duration
	// UploadTimeout bounds a whole upload, however steadily it arrives.
	UploadTimeout time.Duration
	// WriteTimeout bounds the time from a request's headers to the end of
	// its answer (a download: the time its bytes may stop being taken).
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no request for
	// this long.
	IdleTimeout time.Duration
	// MaxConnections bounds the connections served at once; more wait in
	// the listener's backlog, holding no file of this process.
	MaxConnections int
	// MaxUploads bounds the uploads read at once; another waits up to
	// ReadTimeout for its turn, then is answered 503.
	MaxUploads int
	// PublicPage serves the status page and the task pages without the
	// token.
	PublicPage bool
}

// Server defaults and bounds.
const (
	// DefaultListen serves only this machine, until told otherwise.
	DefaultListen        = "127.0.0.1:8080"
	DefaultMaxSampleSize = 64 << 20
	// MaxSampleSizeLimit is the largest max_sample_size accepted: every
	// host reads a sample from the queue's database, and one this large
	// already takes minutes to copy into a guest.
	MaxSampleSizeLimit   = 1 << 30
	DefaultReadTimeout   = 30 * time.Second
	DefaultUploadTimeout = 10 * time.Minute
	DefaultWriteTimeout  = time.Minute
	DefaultIdleTimeout   = 2 * time.Minute
	// DefaultMaxConnections keeps the service's sockets well under the
	// usual limit of 1024 open files, with room for its plugins, database
	// and the files of the tasks it runs.
	DefaultMaxConnections = 256
	DefaultMaxUploads     = 8
	// TokenEnv is the environment variable that holds the API token; it
	// takes precedence over [server] token.
	TokenEnv = "SANDBOX_API_TOKEN"
	// MinTokenLength is the shortest token accepted, from the file or the
	// environment alike.
	MinTokenLength = 16
)

type serverTable struct {
	Listen         string         `toml:"listen"`
	Token          string         `toml:"token"`
	MaxSampleSize  int64          `toml:"max_sample_size"`
	ReadTimeout    *time.Duration `toml:"read_timeout"`
	UploadTimeout  *time.Duration `toml:"upload_timeout"`
	WriteTimeout   *time.Duration `toml:"write_timeout"`
	IdleTimeout    *time.Duration `toml:"idle_timeout"`
	MaxConnections int            `toml:"max_connections"`
	MaxUploads     int            `toml:"max_uploads"`
	PublicPage     bool           `toml:"public_page"`
}

func (t serverTable) validate() (string, error) {
	if t.MaxSampleSize < 0 || t.MaxSampleSize > MaxSampleSizeLimit {
		return "max_sample_size", fmt.Errorf("%d: want 1 to %d bytes (1 GiB)", t.MaxSampleSize, MaxSampleSizeLimit)
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
	}{{"read_timeout", t.ReadTimeout}, {"upload_timeout", t.UploadTimeout}, {"write_timeout", t.WriteTimeout}, {"idle_timeout", t.IdleTimeout}} {
		if d.v != nil && *d.v <= 0 {
			return d.key, fmt.Errorf("must be a positive duration such as \"30s\"")
		}
	}
	if t.MaxConnections < 0 {
		return "max_connections", fmt.Errorf("must not be negative (0 means the default, %d)", DefaultMaxConnections)
	}
	if t.MaxUploads < 0 {
		return "max_uploads", fmt.Errorf("must not be negative (0 means the default, %d)", DefaultMaxUploads)
	}
	if t.MaxConnections > 0 && t.MaxUploads > t.MaxConnections {
		return "max_uploads", fmt.Errorf("%d uploads at once cannot fit in max_connections = %d", t.MaxUploads, t.MaxConnections)
	}
	if t.Token != "" {
		if err := checkToken(t.Token); err != nil {
			return "token", err
		}
	}
	return "", nil
}

// resolve is the table over the defaults.
func (t serverTable) resolve() Server {
	s := Server{Listen: t.Listen, Token: t.Token, MaxSampleSize: t.MaxSampleSize, ReadTimeout: DefaultReadTimeout,
		UploadTimeout: DefaultUploadTimeout, WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout,
		MaxConnections: t.MaxConnections, MaxUploads: t.MaxUploads, PublicPage: t.PublicPage}
	if s.Listen == "" {
		s.Listen = DefaultListen
	}
	if s.MaxSampleSize == 0 {
		s.MaxSampleSize = DefaultMaxSampleSize
	}
	for _, d := range []struct{ v, to *time.Duration }{{t.ReadTimeout, &s.ReadTimeout}, {t.UploadTimeout, &s.UploadTimeout},
		{t.WriteTimeout, &s.WriteTimeout}, {t.IdleTimeout, &s.IdleTimeout}} {
		if d.v != nil {
			*d.to = *d.v
		}
	}
	if s.MaxConnections == 0 {
		s.MaxConnections = DefaultMaxConnections
	}
	if s.MaxUploads == 0 {
		s.MaxUploads = min(DefaultMaxUploads, s.MaxConnections)
	}
	return s
}

func checkToken(tok string) error {
	if len(tok) < MinTokenLength {
		return fmt.Errorf("too short to be secret: use %d characters or more (e.g. openssl rand -hex 16)", MinTokenLength)
	}
	return nil
}

// Queue is the [queue] table of `sandbox serve`, resolved.
type Queue struct {
	// Database is a PostgreSQL URL shared by every host, or empty for an
	// SQLite file in the state directory.
	Database string
	// Host names this host among those sharing the database: the file's
	// value, else the machine's name.
	Host string
	// DeadAfter is how long a host may go without a heartbeat before the
	// other hosts think it dead and take its running analyses over.
	DeadAfter time.Duration
	// MaxAttempts bounds the tries of a job no VM could run.
	MaxAttempts int
	// ArtifactLimit is the largest artifact kept in the database, so that
	// every host serves it; a larger one stays on its host's disk only.
	ArtifactLimit int64
	// Retention is how long the sample and the artifacts of a task that
	// ended are kept; the task, its results and its report stay.
	Retention time.Duration
}

// Queue defaults.
const (
	DefaultDeadAfter     = 15 * time.Second
	DefaultMaxAttempts   = 5
	DefaultArtifactLimit = 64 << 20
	DefaultRetention     = 30 * 24 * time.Hour
	// MinRetention keeps a task's sample at least as long as anyone
	// looking at a task that just ended would want it.
	MinRetention = time.Hour
	// MinDeadAfter is the shortest dead_after accepted: a host heartbeats
	// three times within it, and must not be thought dead for one slow
	// database round trip.
	MinDeadAfter = 3 * time.Second
)

type queueTable struct {
	Database    string         `toml:"database"`
	Host        string         `toml:"host"`
	DeadAfter   *time.Duration `toml:"dead_after"`
	MaxAttempts int            `toml:"max_attempts"`
	// RescueAfter is dead_after's former name, refused with a word on it.
	RescueAfter   *time.Duration `toml:"rescue_after"`
	ArtifactLimit int64          `toml:"artifact_limit"`
	Retention     *time.Duration `toml:"retention"`
}

func (t queueTable) validate() (string, error) {
	if err := checkDatabase(t.Database); err != nil {
		return "database", err
	}
	if t.RescueAfter != nil {
		return "rescue_after", fmt.Errorf("is now dead_after: how long a host may go without a heartbeat before the others " +
			"take its work over (default 15s; the old key waited for each job's whole deadline)")
	}
	if t.DeadAfter != nil && *t.DeadAfter < MinDeadAfter {
		return "dead_after", fmt.Errorf("must be at least %s, such as \"15s\"", MinDeadAfter)
	}
	if t.MaxAttempts < 0 {
		return "max_attempts", fmt.Errorf("must not be negative")
	}
	if t.ArtifactLimit < 0 || t.ArtifactLimit > MaxSampleSizeLimit {
		return "artifact_limit", fmt.Errorf("%d: want 1 to %d bytes (1 GiB); a larger artifact stays on the disk of the host that ran its task",
			t.ArtifactLimit, MaxSampleSizeLimit)
	}
	if t.Retention != nil && *t.Retention < MinRetention {
		return "retention", fmt.Errorf("must be at least %s, such as \"720h\" (30 days)", MinRetention)
	}
	if err := checkHost(t.Host); err != nil {
		return "host", err
	}
	return "", nil
}

func checkDatabase(url string) error {
	if url != "" && !strings.HasPrefix(url, "postgres://") && !strings.HasPrefix(url, "postgresql://") {
		return fmt.Errorf("want a postgres:// URL, or leave it out for the embedded SQLite queue")
	}
	return nil
}

func checkHost(h string) error {
	if strings.ContainsAny(h, " \t\n") {
		return fmt.Errorf("must not contain spaces")
	}
	return nil
}
