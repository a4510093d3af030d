package plugintest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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
	own    bool // dir is this Cache's alone, removed by Close
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
		dir, own, err := cacheDir()
		if err != nil {
			c.mu.Unlock()
			return "", err
		}
		c.dir, c.own, c.builds = dir, own, map[string]*cached{}
	}
	key := strings.Join(append([]string{pkg}, extraFlags...), " ")
	one, ok := c.builds[key]
	if !ok {
		one = &cached{}
		c.builds[key] = one
	}
	dir, own := c.dir, c.own
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
		if own {
			one.path, one.err = Build(dir, pkg, extraFlags...)
			return
		}
		unlock, err := lockFile(dir + ".lock")
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
	if c.own {
		err = os.RemoveAll(c.dir)
	}
	c.dir, c.own, c.builds = "", false, nil
	return err
}

// cacheDir is the directory executables are built into: the one this
// module's test processes share when there is a module and a file lock,
// else a fresh temporary directory of the Cache's own (own).
func cacheDir() (dir string, own bool, err error) {
	if mod := moduleFile(); mod != "" && canLock {
		sum := sha256.Sum256([]byte(mod + "\x00" + os.Getenv("GOFLAGS") + "\x00" + runtime.Version()))
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("plugintest-%d-%s", os.Getuid(), hex.EncodeToString(sum[:8])))
		if err := privateDir(dir); err != nil {
			return "", false, fmt.Errorf("plugintest: %w", err)
		}
		return dir, false, nil
	}
	dir, err = os.MkdirTemp("", "plugintest-")
	return dir, true, err
}

// moduleFile is the go.mod of the module the working directory is in, or
// empty outside one.
func moduleFile() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		mod := filepath.Join(dir, "go.mod")
		if fi, err := os.Stat(mod); err == nil && fi.Mode().IsRegular() {
			return mod
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// errNotPrivate is a shared build directory that another user could
// write to: the tests would run executables someone else put there.
var errNotPrivate = errors.New("is not a directory of this user's alone; remove it")
