package host

import (
	"path/filepath"
	"strings"

	"github.com/sandboxhq/sandbox/core/config"
)

// baseEnv is the minimal environment every plugin gets: enough to find
// programs, a home and a temporary directory on every host OS.
var baseEnv = []string{"PATH", "HOME", "USER", "TMPDIR", "TMP", "TEMP", "SYSTEMROOT", "USERPROFILE", "LOCALAPPDATA"}

// resolvedPath is the plugin's path made absolute against dir.
func resolvedPath(c config.Plugin, dir string) string {
	if filepath.IsAbs(c.Path) || dir == "" {
		return c.Path
	}
	return filepath.Join(dir, c.Path)
}

// environment builds the plugin's environment from the allow-list.
func environment(c config.Plugin, lookup func(string) (string, bool)) []string {
	seen := map[string]bool{}
	var env []string
	add := func(name, value string) {
		if !seen[name] {
			seen[name] = true
			env = append(env, name+"="+value)
		}
	}
	// Explicit values win over pass-through ones.
	for _, e := range c.Env {
		if name, value, ok := strings.Cut(e, "="); ok {
			add(name, value)
		}
	}
	for _, name := range append(append([]string{}, c.Env...), baseEnv...) {
		if strings.Contains(name, "=") {
			continue
		}
		if v, ok := lookup(name); ok {
			add(name, v)
		}
	}
	return env
}
