package plugintest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Cache builds each main package at most once per test process. It keeps
// the executables in a directory that the test processes of one module
// share (under os.TempDir, named after the module's go.mod and GOFLAGS):
// go build leaves an executable there alone when it is up to date, so
// the packages of one `go test ./...` link each executable once between
// them, not once each, and a later run links only what changed. One file
// lock per executable keeps two processes from building it at once. Where
// no module or no file lock is found (outside a module, or on a system
// without flock), each Cache builds into a temporary directory of its own
// instead, as if nothing were shared.
//
// Each package has its own lock, so a test that needs one executable does
// not wait behind another's build. The zero value is ready; call Close
// from TestMain when the tests are done. It is safe for concurrent use.
type Cache struct {
	mu     sync.Mutex
	dir    string
	lock   lockFunc // nil: dir is this Cache's alone, removed by Close
	builds map[string]*cached
}

// cached is one package's executable, built once.
type cached struct {
	once sync.Once
	path string
	err  error
}

// Path builds pkg on first use (see Build) and returns its executable. A
// failed build is not tried again: the error is returned to every caller.
func (c *Cache) Path(pkg string, extraFlags ...string) (string, error) {
	c.mu.Lock()
	if c.dir == "" {
		dir, lock, err := cacheDir()
		if err != nil {
			c.mu.Unlock()
			return "", err
		}
		c.dir, c.lock, c.builds = dir, lock, map[string]*cached{}
	}
	key := strings.Join(append([]string{pkg}, extraFlags...), " ")
	one, ok := c.builds[key]
	if !ok {
		one = &cached{}
		c.builds[key] = one
	}
	dir, lock := c.dir, c.lock
	c.mu.Unlock()
	one.once.Do(func() {
		// A directory per package and flags: the executable is named
		// after the package's last element, which another package or
		// another set of flags builds too.
		sum := sha256.Sum256([]byte(key))
		dir = filepath.Join(dir, hex.EncodeToString(sum[:8]))
		if one.err = os.MkdirAll(dir, 0o700); one.err != nil {
			return
		}
		if lock == nil {
			one.path, one.err = Build(dir, pkg, extraFlags...)
			return
		}
		unlock, err := lock(dir + ".lock")
		if err != nil {
			one.err = fmt.Errorf("plugintest: %w", err)
			return
		}
		defer unlock()
		one.path, one.err = Build(dir, pkg, extraFlags...)
	})
	return one.path, one.err
}

// Close removes the executables of a Cache that kept them to itself, and
// forgets those it shares: another test process may be running them, and
// the next run finds them up to date.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir == "" {
		return nil
	}
	var err error
	if c.lock == nil {
		err = os.RemoveAll(c.dir)
	}
	c.dir, c.lock, c.builds = "", nil, nil
	return err
}

// lockFunc takes an exclusive lock on the file at path across processes,
// waiting while another holds it, and returns what releases it.
type lockFunc func(path string) (unlock func(), err error)

// ownDir is a fresh temporary directory for one Cache alone: no lock,
// since no other process builds into it.
func ownDir() (string, lockFunc, error) {
	dir, err := os.MkdirTemp("", "plugintest-")
	return dir, nil, err
}
