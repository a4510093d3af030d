package wait_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// driver is the part of a driver the toolkit's example needs: a
// hypervisor whose start answers "locked" a few times, a VM that is off,
// and a readiness it announces by closing a channel.
type driver struct {
	mu      sync.Mutex
	busy    int // how many more starts answer locked
	starts  int
	ready   map[string]bool
	changed chan struct{} // closed, and replaced, on every change of ready
}

func (d *driver) run(ctx context.Context, args ...string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.starts++
	if d.busy > 0 {
		d.busy--
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, args[1], "the session is locked by another process")
	}
	return nil
}

func (d *driver) Status(_ context.Context, name string) (hypervisor.Status, error) {
	return hypervisor.Status{VM: name, Power: hypervisor.PowerOff, Raw: "poweroff"}, nil
}

// setReady records that the VM's guest is ready and wakes whoever waits.
func (d *driver) setReady(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ready[name] = true
	close(d.changed)
	d.changed = make(chan struct{})
}

// restore goes through each of the toolkit's waits once, as
// docs/plugin-authoring.md shows them.
func (d *driver) restore(ctx context.Context, name string) error {
	// A policy: the first wait, its growth, its cap, and the jitter that keeps many waiters out of step.
	var busy = wait.Policy{Initial: 50 * time.Millisecond, Max: time.Second, Factor: 2, Jitter: 0.2}

	// Retry while the hypervisor says "locked"; it tries once more just before ctx's deadline, and
	// returns the hypervisor's last error, not the context's.
	_, err := wait.Retry(ctx, busy, hypervisor.IsLocked, func(ctx context.Context) error {
		return d.run(ctx, "startvm", name)
	})
	if err != nil {
		return err
	}

	// Wait until a condition holds: nil, the condition's error, or ctx's error at the end.
	err = wait.Until(ctx, wait.Policy{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Factor: 1.5},
		func(ctx context.Context) (bool, error) {
			st, err := d.Status(ctx, name)
			return err == nil && st.Power.IsOff(), err
		})
	if err != nil {
		return err
	}

	// A condition whose changes you announce (close a channel on each): look again at once, never poll.
	err = wait.On(ctx, func(ctx context.Context) (bool, wait.Next, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.ready[name], wait.Next{Wake: d.changed}, nil
	})
	if err != nil {
		return err
	}

	// One lock per VM whose Lock gives up with its context (§13.1a: VMs do not wait for each other).
	var locks wait.Keyed[string]
	unlock, err := locks.Lock(ctx, name)
	if err != nil {
		return hypervisor.FromContext(ctx, hypervisor.OpRestore, name)
	}
	defer unlock()
	return nil
}

// The toolkit's waits in a driver: a retry of a hypervisor that answers
// "locked" twice, a wait for a state, a wait for an announced change, and
// a VM's lock.
func Example() {
	d := &driver{busy: 2, ready: map[string]bool{}, changed: make(chan struct{})}
	go func() {
		time.Sleep(20 * time.Millisecond)
		d.setReady("worker")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := d.restore(ctx, "worker")
	fmt.Println("restore:", err, "after", d.starts, "starts")
	// Output: restore: <nil> after 3 starts
}
