package fake

import (
	"context"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Watch streams the VM's status (§10): the current one, then one value
// each time the power state, the lock or the current snapshot changes,
// whether an operation changed it or a transition fell due. The channel
// closes when ctx ends or the driver is closed. A receiver that falls
// behind gets the latest state, not every one it missed.
func (d *Driver) Watch(ctx context.Context, name string) (<-chan hypervisor.Status, error) {
	if !d.caps.Has(hypervisor.CapWatch) {
		return nil, hypervisor.Unsupported(hypervisor.OpWatch, name)
	}
	v, err := d.begin(ctx, hypervisor.OpWatch, name)
	if err != nil {
		return d.watchFailed(err)
	}
	d.lock()
	xerr := d.exitDuringLocked(v, nil, hypervisor.OpWatch)
	d.unlock()
	if xerr != nil {
		return nil, xerr
	}
	ch := make(chan hypervisor.Status, 1)
	go d.watch(ctx, v, ch)
	return ch, nil
}

func (d *Driver) watch(ctx context.Context, v *vm, ch chan<- hypervisor.Status) {
	defer d.closeWatch(ch)
	var last hypervisor.Status
	first := true
	ctx, stop := d.untilClosed(ctx)
	defer stop()
	_ = wait.On(ctx, func(ctx context.Context) (bool, wait.Next, error) {
		d.lock()
		now := time.Now()
		v.advance(now)
		st := d.report(v, now)
		next := d.next(v, now)
		d.unlock()
		if !first && d.breaks(ViolationWatchSilent) {
			<-ctx.Done()
			return false, next, ctx.Err()
		}
		if first || !sameStatus(st, last) {
			sent := st
			if first {
				sent = d.firstWatched(st)
			}
			select {
			case ch <- sent:
				last = st
			case <-ctx.Done():
				return false, next, ctx.Err()
			}
		}
		first = false
		return false, next, nil
	})
}

func sameStatus(a, b hypervisor.Status) bool {
	return a.Power == b.Power && a.Raw == b.Raw && a.Lock == b.Lock && a.CurrentSnapshot == b.CurrentSnapshot
}

func (d *Driver) isClosed() bool {
	select {
	case <-d.closed:
		return true
	default:
		return false
	}
}
