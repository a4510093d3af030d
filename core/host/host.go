// Package host launches driver plugins and presents each as a
// hypervisor.Driver.
//
// Plugins are launched lazily, on the first call that needs one, as child
// processes speaking gRPC through github.com/hashicorp/go-plugin. The host
// negotiates the protocol version, hands the plugin its configuration
// table, kills the process if anything after its start fails, relaunches a
// plugin that died on the next call, and kills every plugin on Close. If the
// host itself dies, its plugins notice through a pipe and exit by
// themselves (see sdk.Serve).
package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/sandboxhq/sandbox/core/config"
)

// Options configures a Host.
type Options struct {
	// Plugins are the [plugins.NAME] tables of the configuration file.
	Plugins map[string]config.Plugin
	// File is the configuration file's path; relative plugin paths and the
	// plugins' own relative paths are resolved against its directory.
	File string
	// Data is the configuration file's text, sent to each plugin so that it
	// decodes its own table with accurate line numbers.
	Data []byte
	// Logger receives the host's and, tagged with the plugin name, every
	// plugin's log lines. Defaults to a discarding logger.
	Logger hclog.Logger
}

// Host owns the plugin processes of one sandbox process.
type Host struct {
	opts Options
	dir  string
	log  hclog.Logger
	// ctx ends when Close begins, ending launches under way.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	plugins map[string]*Plugin
	closed  bool

	sockOnce sync.Once
	sockDir  string
}

// New returns a host for the given plugins. Nothing is launched yet.
func New(opts Options) *Host {
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	dir := ""
	if opts.File != "" {
		if abs, err := filepath.Abs(opts.File); err == nil {
			dir = filepath.Dir(abs)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Host{opts: opts, dir: dir, log: log, ctx: ctx, cancel: cancel, plugins: map[string]*Plugin{}}
}

// Names returns the configured plugin names, sorted.
func (h *Host) Names() []string {
	names := make([]string, 0, len(h.opts.Plugins))
	for n := range h.opts.Plugins {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Plugin returns the named plugin, launching nothing yet. An unknown name
// is an error that lists the configured ones.
func (h *Host) Plugin(name string) (*Plugin, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("plugin host is shut down")
	}
	if p, ok := h.plugins[name]; ok {
		return p, nil
	}
	cfg, ok := h.opts.Plugins[name]
	if !ok {
		known := h.Names()
		if len(known) == 0 {
			return nil, fmt.Errorf("no plugin named %q: %s declares no [plugins.NAME] table", name, h.opts.File)
		}
		return nil, fmt.Errorf("no plugin named %q in %s; configured: %s", name, h.opts.File, strings.Join(known, ", "))
	}
	p := &Plugin{name: name, cfg: cfg, host: h}
	h.plugins[name] = p
	return p, nil
}

// Close kills every plugin process and refuses further launches. It is safe
// to call more than once and from a signal handler's goroutine.
func (h *Host) Close() {
	h.cancel()
	h.mu.Lock()
	h.closed = true
	plugins := make([]*Plugin, 0, len(h.plugins))
	for _, p := range h.plugins {
		plugins = append(plugins, p)
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range plugins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Kill()
		}()
	}
	wg.Wait()
	h.sockOnce.Do(func() {}) // no socket directory is made from now on
	if h.sockDir != "" {
		_ = os.RemoveAll(h.sockDir)
	}
}

// socketDir is the directory go-plugin makes the plugins' socket
// directories in: this host's own, made on first use (see
// sockdir_unix.go), or "" for go-plugin's default.
func (h *Host) socketDir() string {
	h.sockOnce.Do(func() {
		dir, err := makeSocketDir()
		if err != nil {
			if !errors.Is(err, errors.ErrUnsupported) {
				h.log.Warn("plugin sockets go to the temp dir, where a killed host leaves them", "error", err)
			}
			return
		}
		h.sockDir = dir
	})
	return h.sockDir
}

func (h *Host) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}
