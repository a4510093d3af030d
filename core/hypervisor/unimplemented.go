package hypervisor

import "context"

// Unimplemented answers CodeUnsupported for every optional operation. A
// driver embeds it and overrides what it supports; operations added to the
// contract later land here too, so an older driver keeps compiling and keeps
// answering "unsupported" for what it has never heard of. Info, Status,
// Start and Stop are not here: every driver must write them.
type Unimplemented struct{}

// ListVMs answers CodeUnsupported.
func (Unimplemented) ListVMs(context.Context) ([]VM, error) {
	return nil, Unsupported(OpList, "")
}

// Unlock answers CodeUnsupported.
func (Unimplemented) Unlock(_ context.Context, vm string) error {
	return Unsupported(OpUnlock, vm)
}

// Restore answers CodeUnsupported.
func (Unimplemented) Restore(_ context.Context, vm, _ string) error {
	return Unsupported(OpRestore, vm)
}

// Cleanup answers CodeUnsupported.
func (Unimplemented) Cleanup(_ context.Context, vm string, _ CleanupRequest) (CleanupResult, error) {
	return CleanupResult{}, Unsupported(OpCleanup, vm)
}

// CopyIn answers CodeUnsupported.
func (Unimplemented) CopyIn(_ context.Context, vm, _, _ string) error {
	return Unsupported(OpCopyIn, vm)
}

// Exec answers CodeUnsupported.
func (Unimplemented) Exec(_ context.Context, vm string, _ ExecRequest) (ExecResult, error) {
	return ExecResult{}, Unsupported(OpExec, vm)
}

// CopyOut answers CodeUnsupported.
func (Unimplemented) CopyOut(_ context.Context, vm, _, _ string) error {
	return Unsupported(OpCopyOut, vm)
}

// Watch answers CodeUnsupported.
func (Unimplemented) Watch(_ context.Context, vm string) (<-chan Status, error) {
	return nil, Unsupported(OpWatch, vm)
}
