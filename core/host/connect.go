package host

import (
	"context"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Launch is one plugin executable and the configuration it is launched
// with, as a [plugins.NAME] table and the file around it would give them:
// for a tool or a test that drives one built plugin.
type Launch struct {
	// Name is the plugin's name; the plugin decodes the table
	// [plugins.NAME.config] of Config. Default "plugin".
	Name string
	// Path is the executable.
	Path string
	// Args and Env are as in the [plugins.NAME] table: extra arguments,
	// and the environment beyond the minimal one ("NAME" passes the
	// variable through, "NAME=value" sets it).
	Args []string
	Env  []string
	// Config is the configuration file's text.
	Config string
	// ConfigFile is the path Config is said to come from: the plugin
	// resolves its relative paths against its directory and names it in
	// errors. Default: config.toml in the working directory.
	ConfigFile string
	// Logger receives the host's and the plugin's log; nil discards it.
	Logger hclog.Logger
}

// Connect returns a function that launches the plugin as the CLI does
// (minimal environment, protocol negotiation, the configuration sent over
// the wire) and returns it with the function that kills it. Its shape is
// the conformance suite's Connector, so a driver's tests can run the suite
// through its built executable.
func Connect(l Launch) func(ctx context.Context) (hypervisor.Driver, func(), error) {
	return func(ctx context.Context) (hypervisor.Driver, func(), error) {
		name := l.Name
		if name == "" {
			name = "plugin"
		}
		file := l.ConfigFile
		if file == "" {
			wd, err := os.Getwd()
			if err != nil {
				return nil, nil, err
			}
			file = filepath.Join(wd, "config.toml")
		}
		p := config.NewPlugin(l.Path)
		p.Args, p.Env = l.Args, l.Env
		h := New(Options{Plugins: map[string]config.Plugin{name: p}, File: file, Data: []byte(l.Config), Logger: l.Logger})
		pl, err := h.Plugin(name)
		if err == nil {
			// Launch now, so that a plugin that cannot start fails once
			// rather than at every call.
			_, err = pl.Info(ctx)
		}
		if err != nil {
			h.Close()
			return nil, nil, err
		}
		return pl, h.Close, nil
	}
}
