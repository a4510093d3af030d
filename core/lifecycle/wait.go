package lifecycle

import (
	"context"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// transient reports whether a status read may succeed if repeated: the
// session is busy, or the plugin or hypervisor is briefly unreachable.
func transient(err error) bool {
	c := hypervisor.CodeOf(err)
	return c == hypervisor.CodeLocked || c == hypervisor.CodeUnavailable
}

// status reads the VM's state, retrying transient failures within ctx and
// for no longer than the VM's status_timeout.
func (o *op) status(ctx context.Context) (hypervisor.Status, error) {
	var st hypervisor.Status
	ctx, cancel := context.WithTimeout(ctx, o.settings().StatusTimeout)
	defer cancel()
	_, err := retry(ctx, transient, func() error {
		o.report.StatusCalls++
		var err error
		st, err = o.vm.Driver.Status(ctx, o.vm.Name)
		return err
	})
	if err != nil {
		return st, err
	}
	o.seen(st)
	return st, nil
}

// retryPolicy paces the retries of a call that may succeed later: a busy
// session, a plugin relaunching.
var retryPolicy = wait.Policy{Initial: 50 * time.Millisecond, Max: time.Second, Factor: 2, Jitter: 0.3}

// retry calls f until it succeeds, fails with an error retryable rejects,
// or ctx ends (wait.Retry). It returns the number of calls and the last
// error of f (not ctx's), so the caller can tell the operator what the
// hypervisor last said.
func retry(ctx context.Context, retryable func(error) bool, f func() error) (int, error) {
	return wait.Retry(ctx, retryPolicy, retryable, func(context.Context) error { return f() })
}

func isLocked(err error) bool { return hypervisor.IsLocked(err) }

// errStillLocked stands for "the session is still held" in retry loops
// that act and then check.
var errStillLocked = hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpUnlock, "", "the session is still locked")

// waitFor returns the first state for which cond holds, watching the VM
// when the driver can, polling with a growing interval otherwise. It ends
// with ctx's error (and the last state seen) when ctx ends first.
func (o *op) waitFor(ctx context.Context, cond func(hypervisor.Status) bool) (hypervisor.Status, error) {
	if o.haveLast && cond(o.last) {
		return o.last, nil
	}
	if o.caps.Has(hypervisor.CapWatch) {
		st, err, done := o.watch(ctx, cond)
		if done {
			return st, err
		}
	}
	return o.poll(ctx, cond)
}

// watch waits on the driver's state stream. done is false when the stream
// could not start or ended early, and the caller should poll instead.
func (o *op) watch(ctx context.Context, cond func(hypervisor.Status) bool) (hypervisor.Status, error, bool) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := o.vm.Driver.Watch(wctx, o.vm.Name)
	if err != nil {
		if hypervisor.IsNotFound(err) {
			return o.last, err, true
		}
		if ctx.Err() != nil {
			return o.last, ctx.Err(), true
		}
		o.fallback("watch failed (%v); polling status instead", err)
		return o.last, nil, false
	}
	for st := range ch {
		o.seen(st)
		if cond(st) {
			return st, nil, true
		}
	}
	if ctx.Err() != nil {
		return o.last, ctx.Err(), true
	}
	o.fallback("the state stream ended early; polling status instead")
	return o.last, nil, false
}

// poll reads the state until cond holds: first after PollInterval, then
// 1.5 times longer each time, never longer than PollMaxInterval.
func (o *op) poll(ctx context.Context, cond func(hypervisor.Status) bool) (hypervisor.Status, error) {
	s := o.settings()
	var found hypervisor.Status
	err := wait.Until(ctx, wait.Policy{Initial: s.PollInterval, Max: s.PollMaxInterval, Factor: 1.5},
		func(ctx context.Context) (bool, error) {
			o.report.StatusCalls++
			st, err := o.vm.Driver.Status(ctx, o.vm.Name)
			switch {
			case err == nil:
				o.lastStatusErr = nil
				o.seen(st)
				found = st
				return cond(st), nil
			case hypervisor.IsNotFound(err):
				return false, err
			case ctx.Err() != nil:
				return false, ctx.Err()
			}
			// Keep polling: the plugin may be relaunching, the hypervisor
			// busy. The step that gives up says why, from this.
			o.lastStatusErr = err
			return false, nil
		})
	if err != nil {
		return o.last, err
	}
	return found, nil
}

// delay waits d within ctx: the legacy settle delay, the one fixed wait the
// core knows, used only for drivers that cannot report their lock.
func delay(ctx context.Context, d time.Duration) error { return wait.Sleep(ctx, d) }

// interruptedRead bounds the status read that ends an interrupted
// operation.
const interruptedRead = 2 * time.Second

// refreshIfInterrupted reads the VM's state once more when the caller gave
// up on the operation (Ctrl-C): waiting stopped at once, but the VM went
// on, and the report's final state should be where it is now, not the last
// state the waiting saw.
func (o *op) refreshIfInterrupted(ctx context.Context) {
	if ctx.Err() == nil || !o.begun {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), interruptedRead)
	defer cancel()
	o.report.StatusCalls++
	if st, err := o.vm.Driver.Status(sctx, o.vm.Name); err == nil {
		o.seen(st)
	}
}
