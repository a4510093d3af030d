package config

import (
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// Plugin is one [plugins.NAME] table, resolved: how to launch a driver
// plugin. The plugin's own settings live in [plugins.NAME.config] and are
// decoded by the plugin itself.
type Plugin struct {
	// Path is the plugin executable as written; the host resolves a
	// relative one against the configuration file's directory.
	Path string
	// Args are extra command-line arguments, e.g. ["--max-protocol=1"].
	Args []string
	// SHA256 is the hex checksum the executable must have, checked before
	// every launch; empty skips the check.
	SHA256 string
	// Env lists what the plugin's environment holds besides the minimal
	// one: "NAME" passes the host's variable through, "NAME=value" sets it.
	Env []string
	// StartTimeout bounds the launch: process start, handshake and
	// configuration.
	StartTimeout time.Duration
	// AutoMTLS makes the host and the plugin authenticate each other with
	// certificates made for each launch.
	AutoMTLS bool
}

// DefaultPluginStartTimeout is start_timeout's default.
const DefaultPluginStartTimeout = 10 * time.Second

// NewPlugin is the table that names only path, with every other key at its
// default: what tests and tools that launch one plugin need.
func NewPlugin(path string) Plugin {
	return Plugin{Path: path, StartTimeout: DefaultPluginStartTimeout, AutoMTLS: true}
}

// pluginTable is the TOML form of Plugin.
type pluginTable struct {
	Path         string         `toml:"path"`
	Args         []string       `toml:"args"`
	SHA256       string         `toml:"sha256"`
	Env          []string       `toml:"env"`
	StartTimeout *time.Duration `toml:"start_timeout"`
	AutoMTLS     *bool          `toml:"auto_mtls"`
}

// resolve validates the table and fills in the defaults; on a mistake it
// returns the key to blame and what is wrong.
func (t pluginTable) resolve() (Plugin, string, error) {
	p := NewPlugin(t.Path)
	p.Args, p.SHA256, p.Env = t.Args, t.SHA256, t.Env
	if t.Path == "" {
		return p, "path", fmt.Errorf("missing: set path to the plugin executable, e.g. path = \"bin/sandbox-plugin-fake\"")
	}
	if t.SHA256 != "" {
		b, err := hex.DecodeString(t.SHA256)
		if err != nil || len(b) != 32 {
			return p, "sha256", fmt.Errorf("%q is not a sha256 checksum (64 hex digits); compute it with sha256sum", t.SHA256)
		}
	}
	for _, e := range t.Env {
		name, _, _ := strings.Cut(e, "=")
		if name == "" || strings.ContainsAny(name, " \t") {
			return p, "env", fmt.Errorf("%q is not NAME or NAME=value", e)
		}
	}
	if t.StartTimeout != nil {
		if *t.StartTimeout <= 0 {
			return p, "start_timeout", fmt.Errorf("must be a positive duration such as \"10s\"")
		}
		p.StartTimeout = *t.StartTimeout
	}
	if t.AutoMTLS != nil {
		p.AutoMTLS = *t.AutoMTLS
	}
	return p, "", nil
}
