package plugintest

import (
	"os"
	"sync"
)

// Cache builds each main package at most once and keeps the executables
// in one temporary directory, for a test process whose tests share them.
// The zero value is ready; call Close from TestMain when the tests are
// done. It is safe for concurrent use.
type Cache struct {
	mu    sync.Mutex
	dir   string
	paths map[string]string
}

// Path builds pkg on first use (see Build) and returns its executable.
func (c *Cache) Path(pkg string, extraFlags ...string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.paths[pkg]; ok {
		return p, nil
	}
	if c.dir == "" {
		dir, err := os.MkdirTemp("", "plugintest-")
		if err != nil {
			return "", err
		}
		c.dir, c.paths = dir, map[string]string{}
	}
	p, err := Build(c.dir, pkg, extraFlags...)
	if err != nil {
		return "", err
	}
	c.paths[pkg] = p
	return p, nil
}

// Close removes the executables.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dir == "" {
		return nil
	}
	err := os.RemoveAll(c.dir)
	c.dir, c.paths = "", nil
	return err
}
