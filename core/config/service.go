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
// page and the metrics.
type Server struct {
	// Listen is the address to serve on.
	Listen string
	// Token is the bearer token every /v1 call must carry: TokenEnv's
	// value, else the file's.
	Token string
	// MaxSampleSize bounds an upload, in bytes.
	MaxSampleSize int64
}

// Server defaults.
const (
	// DefaultListen serves only this machine, until told otherwise.
	DefaultListen        = "127.0.0.1:8080"
	DefaultMaxSampleSize = 64 << 20
	// TokenEnv is the environment variable that holds the API token; it
	// takes precedence over [server] token.
	TokenEnv = "SANDBOX_API_TOKEN"
	// MinTokenLength is the shortest token accepted, from the file or the
	// environment alike.
	MinTokenLength = 16
)

type serverTable struct {
	Listen        string `toml:"listen"`
	Token         string `toml:"token"`
	MaxSampleSize int64  `toml:"max_sample_size"`
}

func (t serverTable) validate() (string, error) {
	if t.MaxSampleSize < 0 {
		return "max_sample_size", fmt.Errorf("must not be negative")
	}
	if t.Token != "" {
		if err := checkToken(t.Token); err != nil {
			return "token", err
		}
	}
	return "", nil
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
}

// Queue defaults.
const (
	DefaultDeadAfter   = 15 * time.Second
	DefaultMaxAttempts = 5
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
	RescueAfter *time.Duration `toml:"rescue_after"`
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
