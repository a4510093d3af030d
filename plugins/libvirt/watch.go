package libvirt

import (
	"context"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// watchInterval is how often a watch also reads the domain's status on its
// own: libvirt raises no event when another process takes or lets go of a
// disk, and none at all while libvirtd is away.
const watchInterval = 250 * time.Millisecond

// Watch streams the VM's status (§10): first the current one, then each
// change of power state, lock or snapshot, until ctx ends. libvirt's
// lifecycle and metadata events for the domain wake it; it reads the
// status on each, and watchInterval after its last read besides.
func (d *Driver) Watch(ctx context.Context, name string) (<-chan hypervisor.Status, error) {
	v, err := d.vmOf(ctx, hypervisor.OpWatch, name)
	if err != nil {
		return nil, err
	}
	first, o, err := d.observe(ctx, hypervisor.OpWatch, v)
	if err != nil {
		return nil, err
	}
	ch := make(chan hypervisor.Status, 1)
	ch <- first
	go func() {
		defer close(ch)
		events := d.subscribe(ctx, o.dom)
		last := first
		// A look that never "holds": the watch ends with ctx. Its first
		// look, at once, sees a change made before the subscription.
		_ = wait.On(ctx, func(ctx context.Context) (bool, wait.Next, error) {
			if events != nil {
				select {
				case _, open := <-events: // the event that woke it, or one more: the read below covers both
					if !open {
						events = nil // libvirtd went away: reads on the timer alone
					}
				default:
				}
			}
			next := wait.Next{Wake: events, At: time.Now().Add(watchInterval)}
			st, _, err := d.observe(ctx, hypervisor.OpWatch, v)
			if ctx.Err() != nil {
				return false, next, ctx.Err()
			}
			if err != nil || (st.Power == last.Power && st.Lock == last.Lock && st.CurrentSnapshot == last.CurrentSnapshot) {
				return false, next, nil
			}
			select {
			case ch <- st:
				last = st
			case <-ctx.Done():
				return false, next, ctx.Err()
			}
			return false, next, nil
		})
	}()
	return ch, nil
}

// subscribe merges libvirt's lifecycle and metadata events of dom into
// one channel, closed when ctx ends or the connection is lost; nil when
// events cannot be had, and the watch reads on its timer alone.
func (d *Driver) subscribe(ctx context.Context, dom golibvirt.Domain) <-chan struct{} {
	l, err := d.conn.client(ctx)
	if err != nil {
		return nil
	}
	out := make(chan struct{}, 1)
	n := 0
	done := make(chan struct{})
	for _, id := range []golibvirt.DomainEventID{golibvirt.DomainEventIDLifecycle, golibvirt.DomainEventIDMetadataChange} {
		evs, err := l.SubscribeEvents(ctx, id, golibvirt.OptDomain{dom})
		if err != nil {
			d.log.Debug("no libvirt events for a watch", "domain", dom.Name, "event", id, "error", err)
			continue
		}
		n++
		go func() {
			defer func() { done <- struct{}{} }()
			// Drained to its end: go-libvirt's sender blocks until read.
			for range evs {
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}()
	}
	if n == 0 {
		return nil
	}
	go func() {
		for range n {
			<-done
		}
		close(out)
	}()
	return out
}
