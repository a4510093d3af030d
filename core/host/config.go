package host

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// PluginConfig is one [plugins.NAME] table of config.toml: how to launch a
// driver plugin. The plugin's own settings live in [plugins.NAME.config]
// and are decoded by the plugin itself.
type PluginConfig struct {
	// Path is the plugin executable; relative paths are resolved against
	// the configuration file's directory. Required.
	Path string `toml:"path"`
	// Args are extra command-line arguments, e.g. ["--max-protocol=1"].
	Args []string `toml:"args"`
	// SHA256 is the hex checksum the executable must have; checked before
	// every launch. Empty skips the check.
	SHA256 string `toml:"sha256"`
	// Env lists what the plugin's environment holds besides the minimal
	// defaults: "NAME" passes the host's variable through, "NAME=value"
	// sets it. Nothing else of the host's environment reaches the plugin.
	Env []string `toml:"env"`
	// StartTimeout bounds the launch: process start, handshake and
	// configuration. Default 10s.
	StartTimeout time.Duration `toml:"start_timeout"`
	// AutoMTLS makes the host and the plugin authenticate each other with
	// certificates made for each launch, so that nothing else that can
	// reach the plugin's socket can use it. Default on.
	AutoMTLS *bool `toml:"auto_mtls"`
}

// DefaultStartTimeout is PluginConfig.StartTimeout's default.
const DefaultStartTimeout = 10 * time.Second

// baseEnv is the minimal environment every plugin gets: enough to find
// programs, a home and a temporary directory on every host OS.
var baseEnv = []string{"PATH", "HOME", "USER", "TMPDIR", "TMP", "TEMP", "SYSTEMROOT", "USERPROFILE", "LOCALAPPDATA"}

// Validate checks the table; key is the table's path for messages, e.g.
// "plugins.fake". It returns the sub-key that is wrong and why.
func (c PluginConfig) Validate() (key string, err error) {
	if c.Path == "" {
		return "path", fmt.Errorf("missing: set path to the plugin executable, e.g. path = \"bin/sandbox-plugin-fake\"")
	}
	if c.SHA256 != "" {
		b, err := hex.DecodeString(c.SHA256)
		if err != nil || len(b) != 32 {
			return "sha256", fmt.Errorf("%q is not a sha256 checksum (64 hex digits); compute it with sha256sum", c.SHA256)
		}
	}
	for _, e := range c.Env {
		name, _, _ := strings.Cut(e, "=")
		if name == "" || strings.ContainsAny(name, " \t") {
			return "env", fmt.Errorf("%q is not NAME or NAME=value", e)
		}
	}
	if c.StartTimeout < 0 {
		return "start_timeout", fmt.Errorf("must not be negative")
	}
	return "", nil
}

// resolvedPath is Path made absolute against dir.
func (c PluginConfig) resolvedPath(dir string) string {
	if filepath.IsAbs(c.Path) || dir == "" {
		return c.Path
	}
	return filepath.Join(dir, c.Path)
}

// environment builds the plugin's environment from the allow-list.
func (c PluginConfig) environment(lookup func(string) (string, bool)) []string {
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

func (c PluginConfig) autoMTLS() bool { return c.AutoMTLS == nil || *c.AutoMTLS }

func (c PluginConfig) startTimeout() time.Duration {
	if c.StartTimeout == 0 {
		return DefaultStartTimeout
	}
	return c.StartTimeout
}
