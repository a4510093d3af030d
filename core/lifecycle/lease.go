package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Lease is a VM held for a sequence of operations, such as an analysis
// task that restores, starts, uses and cleans one VM: while it is held no
// other operation (in this process, or in another sharing the leases)
// touches the VM between two steps. Its methods are the Manager's
// operations of the same names, run under the lease instead of taking it
// each time.
type Lease struct {
	m    *Manager
	vm   VM
	free func()
	once sync.Once
	// left is the holder that died holding the VM's lease before this one
	// took it, if the leases can tell.
	left *LeaseHolder
}

// Lease waits within ctx until no other operation holds vm, then holds it
// until Release. When the leases keep a record of their holders, a holder
// that died holding the VM is remembered for Reconcile to report.
func (m *Manager) Lease(ctx context.Context, vm VM) (*Lease, error) {
	if tl, ok := m.leases.(TryLeases); ok {
		release, left, err := tl.TryAcquire(vm.Key())
		if err == nil {
			return &Lease{m: m, vm: vm, free: release, left: left}, nil
		}
		if !errors.Is(err, ErrLeaseHeld) {
			return nil, fmt.Errorf("lease %q: could not take the VM's lease: %w", vm.Name, err)
		}
	}
	release, err := m.acquire(ctx, "lease", vm)
	if err != nil {
		return nil, err
	}
	return &Lease{m: m, vm: vm, free: release}, nil
}

// TryLease holds vm until Release if nobody holds it, without waiting: a
// VM that another operation (of this process or, with shared leases,
// another) holds answers a *LeaseHeldError, errors.Is ErrLeaseHeld. A
// scheduler uses it to pass over a VM in use elsewhere rather than queue
// behind it. Leases that cannot tell a held lease from a free one are
// waited on within ctx.
func (m *Manager) TryLease(ctx context.Context, vm VM) (*Lease, error) {
	tl, ok := m.leases.(TryLeases)
	if !ok {
		return m.Lease(ctx, vm)
	}
	release, left, err := tl.TryAcquire(vm.Key())
	var held *LeaseHeldError
	switch {
	case errors.As(err, &held):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("its lease could not be taken: %w", err)
	}
	return &Lease{m: m, vm: vm, free: release, left: left}, nil
}

// VM returns the VM the lease holds.
func (l *Lease) VM() VM { return l.vm }

// Release lets other operations have the VM. Releasing twice is harmless.
func (l *Lease) Release() { l.once.Do(l.free) }

func (l *Lease) with(opts []Option) []Option {
	return append(opts[:len(opts):len(opts)], func(o *callOptions) { o.held = true })
}

// EnsureStopped is Manager.EnsureStopped under the lease.
func (l *Lease) EnsureStopped(ctx context.Context, opts ...Option) (*OpReport, error) {
	return l.m.EnsureStopped(ctx, l.vm, l.with(opts)...)
}

// Restore is Manager.Restore under the lease.
func (l *Lease) Restore(ctx context.Context, opts ...Option) (*OpReport, error) {
	return l.m.Restore(ctx, l.vm, l.with(opts)...)
}

// Start is Manager.Start under the lease.
func (l *Lease) Start(ctx context.Context, opts ...Option) (*OpReport, error) {
	return l.m.Start(ctx, l.vm, l.with(opts)...)
}

// Stop is Manager.Stop under the lease.
func (l *Lease) Stop(ctx context.Context, opts ...Option) (*OpReport, error) {
	return l.m.Stop(ctx, l.vm, l.with(opts)...)
}

// Cleanup is Manager.Cleanup under the lease: it quarantines the VM on
// failure and lifts a quarantine on success, as Manager.Cleanup does.
func (l *Lease) Cleanup(ctx context.Context, opts ...Option) (*OpReport, error) {
	return l.m.Cleanup(ctx, l.vm, l.with(opts)...)
}
