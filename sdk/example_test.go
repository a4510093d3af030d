package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// museum is a driver whose VMs are exhibits: named in its table, always
// off, never started. It declares no capability beyond what every driver
// has, and hypervisor.Unimplemented answers unsupported for the rest.
type museum struct {
	hypervisor.Unimplemented
	exhibits []string
}

// newMuseum is the driver's sdk.Factory: its settings come from its table
// of sandbox's config.toml, [plugins.NAME.config].
func newMuseum(cfg sdk.Config, log hclog.Logger) (hypervisor.Driver, error) {
	var c struct {
		Exhibits []string `toml:"exhibits"`
	}
	if err := cfg.Decode(&c); err != nil {
		return nil, err // says file:line: key: what is wrong
	}
	if len(c.Exhibits) == 0 {
		return nil, cfg.Errorf([]string{"exhibits"}, "missing: name at least one VM")
	}
	log.Info("museum open", "exhibits", len(c.Exhibits))
	return &museum{exhibits: c.Exhibits}, nil
}

func (m *museum) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{Name: "museum", Version: "1.0", ContractVersion: hypervisor.ContractVersion,
		Hypervisor: "none: its VMs never run"}, nil
}

func (m *museum) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	if !slices.Contains(m.exhibits, vm) {
		return hypervisor.Status{}, hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStatus, vm, "no exhibit %q", vm)
	}
	return hypervisor.Status{VM: vm, Power: hypervisor.PowerOff, Raw: "on display", Lock: hypervisor.LockUnknown}, nil
}

func (m *museum) Start(ctx context.Context, vm string) error {
	if !slices.Contains(m.exhibits, vm) {
		return hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStart, vm, "no exhibit %q", vm)
	}
	return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStart, vm, "exhibits do not run")
}

func (m *museum) Stop(ctx context.Context, vm string, _ hypervisor.StopMethod) error {
	return hypervisor.Unsupported(hypervisor.OpStop, vm)
}

// A plugin's main is one call; sandbox launches the built program, and
// Serve does the handshake, serves the driver and exits when sandbox goes
// away. (Run by hand, it says it is a plugin and exits.)
func ExampleServe() {
	// func main() {
	sdk.Serve(newMuseum, sdk.WithConfigDocs("https://example.com/museum#settings"))
	// }
}

// ServeInProcess serves a driver inside the process, through the same gRPC
// adapters as a plugin: what a test of the driver uses.
func ExampleServeInProcess() {
	ctx := context.Background()
	cfg := sdk.ConfigFromTOML("museum", "config.toml", []byte(`
[plugins.museum.config]
exhibits = ["vax-11", "pdp-8"]
`))
	p, err := sdk.ServeInProcess(ctx, newMuseum, cfg, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()

	info, _ := p.Info(ctx)
	fmt.Println(info.Name, info.Version, "over protocol", p.Protocol())
	st, _ := p.Status(ctx, "pdp-8")
	fmt.Printf("%s is %s (%s)\n", st.VM, st.Power, st.Raw)

	// Errors cross the wire with their code, and match on this side.
	err = p.Start(ctx, "pdp-8")
	fmt.Println(errors.Is(err, hypervisor.ErrInvalidState), err)
	_, err = p.Status(ctx, "eniac")
	fmt.Println(hypervisor.IsNotFound(err), err)
	// Output:
	// museum 1.0 over protocol 2
	// pdp-8 is off (on display)
	// true start "pdp-8": invalid state: exhibits do not run
	// true status "eniac": not found: no exhibit "eniac"
}

// A mistake in the driver's table is an error with the file, the line and
// the full key, which the driver returns from its factory as it is.
func ExampleConfig_Decode() {
	cfg := sdk.ConfigFromTOML("museum", "config.toml", []byte(`
[plugins.museum.config]
exibits = ["vax-11"]
`))
	_, err := newMuseum(cfg, hclog.NewNullLogger())
	fmt.Println(err)

	cfg = sdk.ConfigFromTOML("museum", "config.toml", []byte(`
[plugins.museum.config]
exhibits = []
`))
	_, err = newMuseum(cfg, hclog.NewNullLogger())
	fmt.Println(err)
	// Output:
	// config.toml:3: plugins.museum.config.exibits: unknown key; check its spelling against the plugin's own documentation
	// config.toml:3: plugins.museum.config.exhibits: missing: name at least one VM
}
