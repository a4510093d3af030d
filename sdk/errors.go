package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/internal/pb"
)

// ErrTransport marks an error that came from the connection to the plugin
// rather than from the driver: the plugin process died or its socket broke.
// The host answers it by relaunching the plugin on the next call.
var ErrTransport = errors.New("plugin connection lost")

var codeToGRPC = map[hypervisor.Code]codes.Code{
	hypervisor.CodeFailed:       codes.Unknown,
	hypervisor.CodeNotFound:     codes.NotFound,
	hypervisor.CodeLocked:       codes.Aborted,
	hypervisor.CodeInvalidState: codes.FailedPrecondition,
	hypervisor.CodeUnsupported:  codes.Unimplemented,
	hypervisor.CodeTimeout:      codes.DeadlineExceeded,
	hypervisor.CodeUnavailable:  codes.Unavailable,
}

// toStatus turns a driver error into a gRPC status that carries the full
// classification as an ErrorDetail. The gRPC code is chosen to make sense to
// a client that ignores the detail.
func toStatus(err error, op, vm string, extra ...protoadapt.MessageV1) error {
	if err == nil {
		return nil
	}
	d := &pb.ErrorDetail{Code: pb.ErrorCode(hypervisor.CodeOf(err)), Op: op, Vm: vm, Message: err.Error()}
	var he *hypervisor.Error
	if errors.As(err, &he) {
		d.Op, d.Vm, d.Message = he.Op, he.VM, he.Message
		if d.Op == "" {
			d.Op = op
		}
		if d.Vm == "" {
			d.Vm = vm
		}
		if d.Message == "" && he.Err != nil {
			d.Message = he.Err.Error()
		}
	}
	st := status.New(codeToGRPC[hypervisor.Code(d.Code)], d.Message)
	if withDetail, derr := st.WithDetails(append([]protoadapt.MessageV1{d}, extra...)...); derr == nil {
		st = withDetail
	}
	return st.Err()
}

// fromStatus rebuilds the driver's *hypervisor.Error from a call's error.
// A status without an ErrorDetail did not come from the driver: a deadline
// or cancellation of the caller's own context, a method the plugin has never
// heard of (an older plugin), or a broken connection (ErrTransport).
func fromStatus(ctx context.Context, err error, op, vm string) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm, Err: err}
	}
	for _, d := range st.Details() {
		if d, ok := d.(*pb.ErrorDetail); ok {
			code := hypervisor.Code(d.GetCode())
			if _, known := codeToGRPC[code]; !known {
				code = hypervisor.CodeFailed
			}
			return &hypervisor.Error{Code: code, Op: d.GetOp(), VM: d.GetVm(), Message: d.GetMessage()}
		}
	}
	switch {
	case st.Code() == codes.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: op, VM: vm, Err: context.DeadlineExceeded}
	case st.Code() == codes.Canceled || errors.Is(ctx.Err(), context.Canceled):
		return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm, Err: context.Canceled}
	case st.Code() == codes.Unimplemented:
		return &hypervisor.Error{Code: hypervisor.CodeUnsupported, Op: op, VM: vm,
			Message: "the plugin predates this operation"}
	case st.Code() == codes.Unavailable:
		return &hypervisor.Error{Code: hypervisor.CodeUnavailable, Op: op, VM: vm, Message: st.Message(), Err: ErrTransport}
	}
	return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm, Message: st.Message()}
}

// cleanupStepsOf returns the steps a failed native cleanup took, which the
// server sends along with the error.
func cleanupStepsOf(err error) hypervisor.CleanupResult {
	st, ok := status.FromError(err)
	if !ok {
		return hypervisor.CleanupResult{}
	}
	for _, d := range st.Details() {
		if r, ok := d.(*pb.CleanupResult); ok {
			return cleanupFromPB(r)
		}
	}
	return hypervisor.CleanupResult{}
}
