package qemu

import (
	"context"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// watchInterval is how often a watch reads the VM's state. QMP events
// would need the VM's single monitor connection held for the whole
// watch, locking every other sandbox process out of the VM; a read costs
// a millisecond.
const watchInterval = 50 * time.Millisecond

// Watch streams the VM's status (§10): first the current one, then each
// change of power state, lock or snapshot, until ctx ends.
func (d *Driver) Watch(ctx context.Context, name string) (<-chan hypervisor.Status, error) {
	v, err := d.vmOf(ctx, hypervisor.OpWatch, name)
	if err != nil {
		return nil, err
	}
	ch := make(chan hypervisor.Status, 1)
	go func() {
		defer close(ch)
		var last hypervisor.Status
		first := true
		// A read that never "holds": the watch ends with ctx.
		_ = wait.Until(ctx, wait.Policy{Initial: watchInterval}, func(ctx context.Context) (bool, error) {
			st, _ := d.observe(ctx, v)
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			if first || st.Power != last.Power || st.Lock != last.Lock || st.CurrentSnapshot != last.CurrentSnapshot {
				select {
				case ch <- st:
				case <-ctx.Done():
					return false, ctx.Err()
				}
				first, last = false, st
			}
			return false, nil
		})
	}()
	return ch, nil
}
