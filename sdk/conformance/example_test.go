package conformance_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// lamp is a driver whose VMs are lamps: on or off, switched at once, with
// no snapshot and no guest. It keeps the contract for what it declares:
// the listing and a power-off.
type lamp struct {
	hypervisor.Unimplemented
	mu      sync.Mutex
	on      map[string]bool
	changed map[string]time.Time
}

// newLamp is the driver's factory; its table lists the lamps:
//
//	[plugins.lamp.config]
//	vms = ["desk", "porch"]
func newLamp(cfg sdk.Config, _ hclog.Logger) (hypervisor.Driver, error) {
	var c struct {
		VMs []string `toml:"vms"`
	}
	if err := cfg.Decode(&c); err != nil {
		return nil, err
	}
	if len(c.VMs) == 0 {
		return nil, cfg.Errorf([]string{"vms"}, "missing: name at least one lamp")
	}
	l := &lamp{on: map[string]bool{}, changed: map[string]time.Time{}}
	for _, vm := range c.VMs {
		l.on[vm], l.changed[vm] = false, time.Now()
	}
	return l, nil
}

func (l *lamp) Info(context.Context) (hypervisor.Info, error) {
	return hypervisor.Info{Name: "lamp", Version: "1.0", ContractVersion: hypervisor.ContractVersion,
		Capabilities: hypervisor.NewCapabilities(hypervisor.CapList, hypervisor.CapStopPowerOff)}, nil
}

func (l *lamp) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var vms []hypervisor.VM
	for _, vm := range slices.Sorted(func(yield func(string) bool) {
		for name := range l.on {
			if !yield(name) {
				return
			}
		}
	}) {
		vms = append(vms, hypervisor.VM{Name: vm, Power: power(l.on[vm])})
	}
	return vms, nil
}

func power(on bool) hypervisor.PowerState {
	if on {
		return hypervisor.PowerRunning
	}
	return hypervisor.PowerOff
}

// switchTo turns the lamp on or off: the whole of Start and Stop.
func (l *lamp) switchTo(ctx context.Context, op, vm string, on bool) error {
	if err := hypervisor.FromContext(ctx, op, vm); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	was, ok := l.on[vm]
	if !ok {
		return hypervisor.NewError(hypervisor.CodeNotFound, op, vm, "no lamp %q", vm)
	}
	if was != on {
		l.on[vm], l.changed[vm] = on, time.Now()
	}
	return nil
}

func (l *lamp) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	if err := hypervisor.FromContext(ctx, hypervisor.OpStatus, vm); err != nil {
		return hypervisor.Status{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	on, ok := l.on[vm]
	if !ok {
		return hypervisor.Status{}, hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpStatus, vm, "no lamp %q", vm)
	}
	raw := map[bool]string{true: "lit", false: "dark"}[on]
	return hypervisor.Status{VM: vm, Power: power(on), Raw: raw, Lock: hypervisor.LockUnknown, StateChanged: l.changed[vm]}, nil
}

func (l *lamp) Start(ctx context.Context, vm string) error {
	return l.switchTo(ctx, hypervisor.OpStart, vm, true)
}

func (l *lamp) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	if m != hypervisor.StopPowerOff {
		return hypervisor.Unsupported(hypervisor.OpStop, vm)
	}
	return l.switchTo(ctx, hypervisor.OpStop, vm, false)
}

// Run is how a driver's own module runs the suite: a test that names the
// driver and its VMs. Each check is a subtest, so `go test -run
// 'TestConformance/Stop/'` runs one group.
func ExampleRun() {
	// In a _test.go file of the driver's module:
	_ = func(t *testing.T) { // func TestConformance(t *testing.T) {
		conformance.Run(t, conformance.Target{
			Connect: conformance.InProcess("lamp", newLamp, `
[plugins.lamp.config]
vms = ["desk", "porch"]
`),
			VM:     "desk",
			PeerVM: "porch",
			Timing: conformance.Timing{Settle: 5 * time.Second},
		})
	}
}

// Collect runs the same checks outside go test and returns the verdicts.
func ExampleCollect() {
	rep, err := conformance.Collect(context.Background(), conformance.Target{
		Connect: conformance.InProcess("lamp", newLamp, `
[plugins.lamp.config]
vms = ["desk"]
`),
		VM:     "desk",
		Timing: conformance.Timing{Settle: 5 * time.Second},
	}, conformance.Options{Match: func(check string) bool { return strings.HasPrefix(check, "Start/") }})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(rep.Driver.Name, rep.Driver.Version)
	for _, r := range rep.Results {
		fmt.Println(r.Check, r.Clause, r.Outcome)
	}
	fmt.Println("failed:", rep.Failed())
	// Output:
	// lamp 1.0
	// Start/UnknownVMIsNotFound §11.3 pass
	// Start/ReachesRunning §4.1 pass
	// Start/RunningIsNoOp §4.2 pass
	// Start/LingeringLockIsLocked §4.3 skip
	// failed: false
}

// InProcess's config string is what config.toml would hold for the plugin:
// the driver's table is [plugins.NAME.config]. A string without it is
// refused, saying what it has instead.
func ExampleInProcess() {
	_, err := conformance.Collect(context.Background(), conformance.Target{
		Connect: conformance.InProcess("lamp", newLamp, `vms = ["desk"]`),
		VM:      "desk",
	}, conformance.Options{})
	fmt.Println(err)

	_, err = conformance.Collect(context.Background(), conformance.Target{
		Connect: conformance.InProcess("lamp", newLamp, `
[plugins.lamp.config]
vms = []
`),
		VM: "desk",
	}, conformance.Options{})
	fmt.Println(err)
	// Output:
	// conformance: connect to the driver: conformance.InProcess("lamp"): the config string has no [plugins.lamp.config] table, which holds the driver's settings; it has keys outside any table (vms). It is a config.toml's text: put the driver's settings under a [plugins.lamp.config] header
	// conformance: connect to the driver: conformance.InProcess("lamp"): the driver rejected its configuration: InProcess config:3: plugins.lamp.config.vms: missing: name at least one lamp
}
