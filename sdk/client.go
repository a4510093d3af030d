package sdk

import (
	"context"
	"sync"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/internal/pb"
)

// Remote is a driver on the far side of a plugin connection, as the host
// sees it: the whole contract, plus the configuration hand-off and the
// protocol version the two sides agreed on.
type Remote interface {
	hypervisor.Driver
	// Configure sends the plugin its configuration table; the plugin builds
	// its driver from it. The host calls it once, right after launch.
	Configure(ctx context.Context, cfg Config) error
	// Protocol is the negotiated protocol version, 1 or 2.
	Protocol() int
	// Diagnostics is what the SDK in the plugin reported, with its latest
	// answer, about its driver breaking the contract where the wire hides
	// it (see Diagnostics).
	Diagnostics() Diagnostics
}

// clientV2 speaks protocol version 2.
type clientV2 struct {
	c    pb.HypervisorV2Client
	diag diagStore
}

var _ Remote = (*clientV2)(nil)

func (c *clientV2) Protocol() int { return 2 }

func (c *clientV2) Diagnostics() Diagnostics { return c.diag.get() }

func (c *clientV2) Configure(ctx context.Context, cfg Config) error {
	o, seen := c.diag.header()
	_, err := c.c.Configure(ctx, configToPB(cfg), o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpConfigure, "")
}

func (c *clientV2) Info(ctx context.Context) (hypervisor.Info, error) {
	o, seen := c.diag.header()
	p, err := c.c.Info(ctx, &pb.Empty{}, o)
	seen()
	if err != nil {
		return hypervisor.Info{}, fromStatus(ctx, err, hypervisor.OpInfo, "")
	}
	return infoFromPB(p), nil
}

func (c *clientV2) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	o, seen := c.diag.header()
	p, err := c.c.ListVMs(ctx, &pb.Empty{}, o)
	seen()
	if err != nil {
		return nil, fromStatus(ctx, err, hypervisor.OpList, "")
	}
	return vmsFromPB(p), nil
}

func (c *clientV2) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	o, seen := c.diag.header()
	p, err := c.c.Status(ctx, &pb.VMRequest{Vm: vm}, o)
	seen()
	if err != nil {
		return hypervisor.Status{}, fromStatus(ctx, err, hypervisor.OpStatus, vm)
	}
	return statusFromPB(p), nil
}

func (c *clientV2) Start(ctx context.Context, vm string) error {
	o, seen := c.diag.header()
	_, err := c.c.Start(ctx, &pb.VMRequest{Vm: vm}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpStart, vm)
}

func (c *clientV2) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	o, seen := c.diag.header()
	_, err := c.c.Stop(ctx, &pb.StopRequest{Vm: vm, Method: string(m)}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpStop, vm)
}

func (c *clientV2) Unlock(ctx context.Context, vm string) error {
	o, seen := c.diag.header()
	_, err := c.c.Unlock(ctx, &pb.VMRequest{Vm: vm}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpUnlock, vm)
}

func (c *clientV2) Restore(ctx context.Context, vm, snapshot string) error {
	o, seen := c.diag.header()
	_, err := c.c.Restore(ctx, &pb.RestoreRequest{Vm: vm, Snapshot: snapshot}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpRestore, vm)
}

func (c *clientV2) Cleanup(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	o, seen := c.diag.header()
	p, err := c.c.Cleanup(ctx, &pb.CleanupRequest{Vm: vm, Restore: req.Restore, Snapshot: req.Snapshot}, o)
	seen()
	if err != nil {
		return cleanupStepsOf(err), fromStatus(ctx, err, hypervisor.OpCleanup, vm)
	}
	return cleanupFromPB(p), nil
}

func (c *clientV2) CopyIn(ctx context.Context, vm, hostPath, guestPath string) error {
	o, seen := c.diag.header()
	_, err := c.c.CopyIn(ctx, &pb.CopyRequest{Vm: vm, HostPath: hostPath, GuestPath: guestPath}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpCopyIn, vm)
}

func (c *clientV2) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	o, seen := c.diag.header()
	p, err := c.c.Exec(ctx, execToPB(vm, req), o)
	seen()
	if err != nil {
		return hypervisor.ExecResult{}, fromStatus(ctx, err, hypervisor.OpExec, vm)
	}
	return execResultFromPB(p), nil
}

func (c *clientV2) CopyOut(ctx context.Context, vm, guestPath, hostPath string) error {
	o, seen := c.diag.header()
	_, err := c.c.CopyOut(ctx, &pb.CopyRequest{Vm: vm, HostPath: hostPath, GuestPath: guestPath}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpCopyOut, vm)
}

// Watch reads the first value before returning, so that an unknown VM or an
// unsupported operation is an error here rather than a silently closed
// channel.
func (c *clientV2) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.c.Watch(ctx, &pb.VMRequest{Vm: vm})
	if err != nil {
		cancel()
		return nil, fromStatus(ctx, err, hypervisor.OpWatch, vm)
	}
	first, err := stream.Recv()
	if md, herr := stream.Header(); herr == nil {
		c.diag.note(md)
	}
	if err != nil {
		cancel()
		return nil, fromStatus(ctx, err, hypervisor.OpWatch, vm)
	}
	ch := make(chan hypervisor.Status, 1)
	ch <- statusFromPB(first)
	go func() {
		defer cancel()
		defer close(ch)
		for {
			p, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case ch <- statusFromPB(p):
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// clientV1 speaks protocol version 1 and presents it as the full contract:
// what v1 cannot do answers CodeUnsupported, and Info reports the v1
// capability set, which a v1 plugin has no way to declare itself (§1.3).
type clientV1 struct {
	hypervisor.Unimplemented
	c    pb.HypervisorV1Client
	diag diagStore

	mu     sync.Mutex
	plugin string
}

var _ Remote = (*clientV1)(nil)

func (c *clientV1) Protocol() int { return 1 }

func (c *clientV1) Diagnostics() Diagnostics { return c.diag.get() }

func (c *clientV1) Configure(ctx context.Context, cfg Config) error {
	c.mu.Lock()
	c.plugin = cfg.Plugin
	c.mu.Unlock()
	o, seen := c.diag.header()
	_, err := c.c.Configure(ctx, configToPB(cfg), o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpConfigure, "")
}

func (c *clientV1) Info(context.Context) (hypervisor.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return hypervisor.Info{
		Name:            c.plugin,
		ContractVersion: 1,
		Capabilities:    hypervisor.NewCapabilities(hypervisor.V1Capabilities...),
	}, nil
}

func (c *clientV1) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	o, seen := c.diag.header()
	p, err := c.c.Status(ctx, &pb.VMRequest{Vm: vm}, o)
	seen()
	if err != nil {
		return hypervisor.Status{}, fromStatus(ctx, err, hypervisor.OpStatus, vm)
	}
	st := statusFromPB(p)
	// A v1 plugin has no way to declare lock reporting, so whatever it says
	// about locks is not part of its contract.
	st.Lock = hypervisor.LockUnknown
	return st, nil
}

func (c *clientV1) Start(ctx context.Context, vm string) error {
	o, seen := c.diag.header()
	_, err := c.c.Start(ctx, &pb.VMRequest{Vm: vm}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpStart, vm)
}

func (c *clientV1) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	if m != hypervisor.StopPowerOff {
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpStop, vm,
			"protocol version 1 only knows power-off, not %q", m)
	}
	o, seen := c.diag.header()
	_, err := c.c.PowerOff(ctx, &pb.VMRequest{Vm: vm}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpStop, vm)
}

func (c *clientV1) Restore(ctx context.Context, vm, snapshot string) error {
	o, seen := c.diag.header()
	_, err := c.c.Restore(ctx, &pb.RestoreRequest{Vm: vm, Snapshot: snapshot}, o)
	seen()
	return fromStatus(ctx, err, hypervisor.OpRestore, vm)
}
