package plugintest

import (
	"os"
	"strings"
	"sync"
)

// Cache builds each main package at most once and keeps the executables
// in one temporary directory, for a test process whose tests share them.
// Each package has its own lock, so a test that needs one executable does
// not wait behind another's build. The zero value is ready; call Close
// from TestMain when the tests are done. It is safe for concurrent use.
type Cache struct {
	mu     sync.Mutex
	dir    string
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
		dir, err := os.MkdirTemp("", "plugintest-")
		if err != nil {
			c.mu.Unlock()
			return "", err
		}
		c.dir, c.builds = dir, map[string]*cached{}
	}
	key := strings.Join(append([]string{pkg}, extraFlags...), " ")
	one, ok := c.builds[key]
	if !ok {
		one = &cached{}
		c.builds[key] = one
	}
	dir := c.dir
	c.mu.Unlock()
	one.once.Do(func() {
		if len(extraFlags) > 0 {
			// Its own directory: the executable is named after pkg,
			// which another set of flags builds too.
			if dir, one.err = os.MkdirTemp(dir, "flags-"); one.err != nil {
				return
			}
		}
		one.path, one.err = Build(dir, pkg, extraFlags...)
	})
	return one.path, one.err
}

// Close removes the executables.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir == "" {
		return nil
	}
	err := os.RemoveAll(c.dir)
	c.dir, c.builds = "", nil
	return err
}
