package sdk

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Factory builds a driver from the plugin's configuration table. It runs in
// the plugin process when the host configures the plugin; an error (for
// example a *configfile.Error from cfg.Decode) fails the launch and reaches
// the operator as it is. logger writes into the host's log, tagged with the
// plugin's name. If the driver has a Close() error method, Serve calls it
// before the process exits.
type Factory func(cfg Config, logger hclog.Logger) (hypervisor.Driver, error)

// Serve runs the plugin: call it from main and nothing else. It returns
// when the host stops the plugin; if the host dies instead, the plugin
// notices within milliseconds and exits by itself.
//
// A plugin serves protocol versions 1 and 2 and the host picks the highest.
// Started with --max-protocol=1 (or SANDBOX_PLUGIN_MAX_PROTOCOL=1) it serves
// only the legacy contract, which is how the core's fallback paths are
// exercised against a real plugin.
func Serve(factory Factory, opts ...ServeOption) {
	o := serveOptions{maxProtocol: ProtocolV2}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.fromEnvironment(os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Level:      hclog.LevelFromString(os.Getenv(EnvLogLevel)),
		Output:     os.Stderr,
		JSONFormat: true,
	})
	slot := newSlot(factory, logger, o)
	surviveDeadHostPipe()
	watchHost(func() {
		closeWithin(slot, hostGoneClose)
		os.Exit(0)
	})
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: serverPluginSets(slot, o.maxProtocol),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return plugin.DefaultGRPCServer(append(opts, slot.diag.serverOptions()...))
		},
		Logger: logger,
	})
	closeWithin(slot, time.Second)
}

// ServeOption adjusts Serve.
type ServeOption func(*serveOptions)

type serveOptions struct {
	maxProtocol int
	configDocs  string
}

// WithMaxProtocol caps the protocol version the plugin serves, for a driver
// that wants to present only the legacy contract.
func WithMaxProtocol(v int) ServeOption {
	return func(o *serveOptions) { o.maxProtocol = v }
}

// WithConfigDocs names where an operator reads about the plugin's table
// (a file, a web page): Config.Decode points there when the table has a key
// the driver does not know. Without it the hint is the plugin's own
// documentation, since sandbox's docs/configuration.md documents only
// sandbox's own keys.
func WithConfigDocs(where string) ServeOption {
	return func(o *serveOptions) { o.configDocs = where }
}

// fromEnvironment applies the --max-protocol flag and the environment; the
// SDK owns only that one flag and leaves every other argument to the driver.
func (o *serveOptions) fromEnvironment(args []string, getenv func(string) string) error {
	value := getenv(EnvMaxProtocol)
	for i, a := range args {
		name, v, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "max-protocol" {
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				return fmt.Errorf("--max-protocol needs a value: 1 or 2")
			}
			v = args[i+1]
		}
		value = v
	}
	if value == "" {
		return nil
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < ProtocolV1 || n > ProtocolV2 {
		return fmt.Errorf("max protocol %q: want 1 or 2", value)
	}
	o.maxProtocol = min(o.maxProtocol, n)
	return nil
}

// watchHost calls gone once the host process has died. The host passes the
// read end of a pipe whose write end only it holds; the kernel closes that
// end when the host dies, however it dies, so the read returns at once. A
// host that passes no pipe (a foreign host, or Windows, where the host
// passes no extra files) is watched through the parent process instead
// (watchParent, per operating system).
func watchHost(gone func()) {
	if v := os.Getenv(EnvHostFD); v != "" {
		if fd, err := strconv.Atoi(v); err == nil {
			if f := os.NewFile(uintptr(fd), "host-pipe"); f != nil {
				go func() {
					_, _ = io.Copy(io.Discard, f)
					gone()
				}()
				return
			}
		}
	}
	watchParent(gone)
}

// hostGoneClose bounds the driver's Close once the host has died: the
// plugin exits as soon as Close returns, and Close is how a driver kills
// what it started and removes its files, which a busy machine can stretch
// well past what it takes on an idle one. Only a Close that hangs keeps
// the plugin that long.
const hostGoneClose = 5 * time.Second

func closeWithin(slot *driverSlot, d time.Duration) {
	done := make(chan struct{})
	go func() {
		slot.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}
