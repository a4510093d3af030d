package sdk

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/internal/pb"
)

// driverSlot holds the driver a plugin process serves. The driver does not
// exist until the host sends the configuration, so every call first takes
// it from here.
type driverSlot struct {
	factory Factory
	logger  hclog.Logger
	diag    diagnostics
	// docs is where the plugin's table is documented (WithConfigDocs).
	docs string

	mu     sync.Mutex
	driver hypervisor.Driver
}

func newSlot(factory Factory, logger hclog.Logger, o serveOptions) *driverSlot {
	return &driverSlot{factory: factory, logger: logger, diag: diagnostics{logger: logger}, docs: o.configDocs}
}

// served is the driver the factory built, nil before Configure.
func (s *driverSlot) served() hypervisor.Driver {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.driver
}

func (s *driverSlot) configure(req *pb.ConfigureRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.driver != nil {
		return toStatus(hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpConfigure, "",
			"the plugin is already configured; the host configures a plugin once per launch"), hypervisor.OpConfigure, "")
	}
	cfg := configFromPB(req)
	cfg.docs = s.docs
	d, err := s.factory(cfg, s.logger)
	if err != nil {
		return toStatus(err, hypervisor.OpConfigure, "")
	}
	s.driver = d
	return nil
}

func (s *driverSlot) get(op, vm string) (hypervisor.Driver, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.driver == nil {
		return nil, toStatus(hypervisor.NewError(hypervisor.CodeInvalidState, op, vm,
			"the plugin has not been configured yet"), op, vm)
	}
	return s.driver, nil
}

// close releases the driver's resources if it holds any.
func (s *driverSlot) close() {
	s.mu.Lock()
	d := s.driver
	s.mu.Unlock()
	if c, ok := d.(interface{ Close() error }); ok {
		_ = c.Close()
	}
}

// serverV2 serves protocol version 2: the whole contract.
type serverV2 struct {
	pb.UnimplementedHypervisorV2Server
	slot *driverSlot
}

func (s *serverV2) Configure(_ context.Context, req *pb.ConfigureRequest) (*pb.Empty, error) {
	return &pb.Empty{}, s.slot.configure(req)
}

func (s *serverV2) Info(ctx context.Context, _ *pb.Empty) (*pb.DriverInfo, error) {
	d, err := s.slot.get(hypervisor.OpInfo, "")
	if err != nil {
		return nil, err
	}
	info, err := d.Info(ctx)
	if err != nil {
		return nil, toStatus(err, hypervisor.OpInfo, "")
	}
	return infoToPB(info), nil
}

func (s *serverV2) ListVMs(ctx context.Context, _ *pb.Empty) (*pb.VMList, error) {
	d, err := s.slot.get(hypervisor.OpList, "")
	if err != nil {
		return nil, err
	}
	vms, err := d.ListVMs(ctx)
	if err != nil {
		return nil, toStatus(err, hypervisor.OpList, "")
	}
	return vmsToPB(vms), nil
}

func (s *serverV2) Status(ctx context.Context, req *pb.VMRequest) (*pb.VMStatus, error) {
	return serveStatus(ctx, s.slot, req)
}

func (s *serverV2) Start(ctx context.Context, req *pb.VMRequest) (*pb.Empty, error) {
	return serveStart(ctx, s.slot, req)
}

func (s *serverV2) Stop(ctx context.Context, req *pb.StopRequest) (*pb.Empty, error) {
	return serveStop(ctx, s.slot, req.GetVm(), hypervisor.StopMethod(req.GetMethod()))
}

func (s *serverV2) Unlock(ctx context.Context, req *pb.VMRequest) (*pb.Empty, error) {
	d, err := s.slot.get(hypervisor.OpUnlock, req.GetVm())
	if err != nil {
		return nil, err
	}
	return &pb.Empty{}, toStatus(d.Unlock(ctx, req.GetVm()), hypervisor.OpUnlock, req.GetVm())
}

func (s *serverV2) Restore(ctx context.Context, req *pb.RestoreRequest) (*pb.Empty, error) {
	return serveRestore(ctx, s.slot, req)
}

func (s *serverV2) Cleanup(ctx context.Context, req *pb.CleanupRequest) (*pb.CleanupResult, error) {
	d, err := s.slot.get(hypervisor.OpCleanup, req.GetVm())
	if err != nil {
		return nil, err
	}
	res, err := d.Cleanup(ctx, req.GetVm(), hypervisor.CleanupRequest{Restore: req.GetRestore(), Snapshot: req.GetSnapshot()})
	if err != nil {
		// What the driver did before it failed is what the operator needs.
		return nil, toStatus(err, hypervisor.OpCleanup, req.GetVm(), cleanupToPB(res))
	}
	return cleanupToPB(res), nil
}

func (s *serverV2) CopyIn(ctx context.Context, req *pb.CopyRequest) (*pb.Empty, error) {
	d, err := s.slot.get(hypervisor.OpCopyIn, req.GetVm())
	if err != nil {
		return nil, err
	}
	err = d.CopyIn(ctx, req.GetVm(), req.GetHostPath(), req.GetGuestPath())
	return &pb.Empty{}, toStatus(err, hypervisor.OpCopyIn, req.GetVm())
}

func (s *serverV2) Exec(ctx context.Context, req *pb.ExecRequest) (*pb.ExecResult, error) {
	d, err := s.slot.get(hypervisor.OpExec, req.GetVm())
	if err != nil {
		return nil, err
	}
	res, err := d.Exec(ctx, req.GetVm(), execFromPB(req))
	if err != nil {
		return nil, toStatus(err, hypervisor.OpExec, req.GetVm())
	}
	return execResultToPB(res), nil
}

func (s *serverV2) CopyOut(ctx context.Context, req *pb.CopyRequest) (*pb.Empty, error) {
	d, err := s.slot.get(hypervisor.OpCopyOut, req.GetVm())
	if err != nil {
		return nil, err
	}
	err = d.CopyOut(ctx, req.GetVm(), req.GetGuestPath(), req.GetHostPath())
	return &pb.Empty{}, toStatus(err, hypervisor.OpCopyOut, req.GetVm())
}

func (s *serverV2) Watch(req *pb.VMRequest, stream pb.HypervisorV2_WatchServer) error {
	d, err := s.slot.get(hypervisor.OpWatch, req.GetVm())
	if err != nil {
		return err
	}
	// The driver's watch ends with the stream, or when sending fails.
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ch, err := d.Watch(ctx, req.GetVm())
	if err != nil {
		return toStatus(err, hypervisor.OpWatch, req.GetVm())
	}
	for {
		select {
		case st, open := <-ch:
			if !open {
				return nil
			}
			if err := stream.Send(statusToPB(st)); err != nil {
				cancel()
				s.slot.awaitClose(ch, req.GetVm())
				return err
			}
		case <-ctx.Done():
			// The stream ends with its context whatever the driver does: the
			// host has already closed its side.
			s.slot.awaitClose(ch, req.GetVm())
			return ctx.Err()
		}
	}
}

// awaitClose gives a driver whose watch's context ended WatchCloseGrace to
// close its channel, reading (and dropping) what it still sends, then
// abandons the channel: a driver that never closes it pins neither this
// goroutine nor what it sends.
func (s *driverSlot) awaitClose(ch <-chan hypervisor.Status, vm string) {
	t := time.NewTimer(WatchCloseGrace)
	defer t.Stop()
	for {
		select {
		case _, open := <-ch:
			if !open {
				return
			}
		case <-t.C:
			s.diag.unclosedWatch(vm)
			return
		}
	}
}

// serverV1 serves protocol version 1, the legacy contract, from the same
// driver: what a v1 host asks for is a subset of version 2.
type serverV1 struct {
	pb.UnimplementedHypervisorV1Server
	slot *driverSlot
}

func (s *serverV1) Configure(_ context.Context, req *pb.ConfigureRequest) (*pb.Empty, error) {
	return &pb.Empty{}, s.slot.configure(req)
}

func (s *serverV1) Status(ctx context.Context, req *pb.VMRequest) (*pb.VMStatus, error) {
	return serveStatus(ctx, s.slot, req)
}

func (s *serverV1) Start(ctx context.Context, req *pb.VMRequest) (*pb.Empty, error) {
	return serveStart(ctx, s.slot, req)
}

func (s *serverV1) PowerOff(ctx context.Context, req *pb.VMRequest) (*pb.Empty, error) {
	return serveStop(ctx, s.slot, req.GetVm(), hypervisor.StopPowerOff)
}

func (s *serverV1) Restore(ctx context.Context, req *pb.RestoreRequest) (*pb.Empty, error) {
	return serveRestore(ctx, s.slot, req)
}

func serveStatus(ctx context.Context, slot *driverSlot, req *pb.VMRequest) (*pb.VMStatus, error) {
	d, err := slot.get(hypervisor.OpStatus, req.GetVm())
	if err != nil {
		return nil, err
	}
	st, err := d.Status(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err, hypervisor.OpStatus, req.GetVm())
	}
	return statusToPB(st), nil
}

func serveStart(ctx context.Context, slot *driverSlot, req *pb.VMRequest) (*pb.Empty, error) {
	d, err := slot.get(hypervisor.OpStart, req.GetVm())
	if err != nil {
		return nil, err
	}
	return &pb.Empty{}, toStatus(d.Start(ctx, req.GetVm()), hypervisor.OpStart, req.GetVm())
}

func serveStop(ctx context.Context, slot *driverSlot, vm string, m hypervisor.StopMethod) (*pb.Empty, error) {
	d, err := slot.get(hypervisor.OpStop, vm)
	if err != nil {
		return nil, err
	}
	return &pb.Empty{}, toStatus(d.Stop(ctx, vm, m), hypervisor.OpStop, vm)
}

func serveRestore(ctx context.Context, slot *driverSlot, req *pb.RestoreRequest) (*pb.Empty, error) {
	d, err := slot.get(hypervisor.OpRestore, req.GetVm())
	if err != nil {
		return nil, err
	}
	return &pb.Empty{}, toStatus(d.Restore(ctx, req.GetVm(), req.GetSnapshot()), hypervisor.OpRestore, req.GetVm())
}
