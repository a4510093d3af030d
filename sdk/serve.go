package sdk

import (
	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Factory builds a driver from the plugin's configuration table. It runs in
// the plugin process when the host configures the plugin; an error (for
// example a *configfile.Error from cfg.Decode) fails the launch and reaches
// the operator as it is. logger writes into the host's log, tagged with the
// plugin's name.
type Factory func(cfg Config, logger hclog.Logger) (hypervisor.Driver, error)

// Serve runs the plugin: call it from main and nothing else. It never
// returns; the process exits when the host stops it or dies.
func Serve(factory Factory, opts ...ServeOption) {
	panic("not implemented yet")
}

// ServeOption adjusts Serve.
type ServeOption func(*serveOptions)

type serveOptions struct {
	maxProtocol int
}
