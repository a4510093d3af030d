package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// restoreUntilFree restores snapshot within ctx, retrying while the
// hypervisor says the session is held. Refusals that outlast
// release_timeout are met as a session that outlived a stop: the core
// unlocks actively (the driver's unlock, else an emergency stop), once,
// whatever the VM's status says, since a hypervisor may refuse for a
// holder its status does not show; then it retries until ctx ends. A
// restore that still fails names the hypervisor's last refusal, not the
// deadline that cut the last try short.
func (o *op) restoreUntilFree(ctx context.Context, name, snapshot string) error {
	s := o.settings()
	begun := time.Now()
	var refusal error
	try := func() error {
		err := o.vm.Driver.Restore(ctx, o.vm.Name, snapshot)
		if isLocked(err) {
			refusal = err
		}
		return err
	}
	step := OpStep{Name: name, Deadline: s.RestoreTimeout}
	freed := false
	for {
		phase, cancel := ctx, context.CancelFunc(func() {})
		if !freed {
			phase, cancel = context.WithDeadline(ctx, begun.Add(s.ReleaseTimeout))
		}
		n, err := retry(phase, isLocked, try)
		cancel()
		step.Attempts += n
		step.Duration = time.Since(begun)
		if err == nil {
			step.Outcome = "done"
			o.addStep(step)
			return nil
		}
		if !isLocked(err) || ctx.Err() != nil || freed || o.noWayToFree() {
			return o.restoreFailed(step, err, refusal)
		}
		// Still held after release_timeout of refusals: free it.
		freed = true
		step.Outcome, step.Detail = "refused", err.Error()
		o.addStep(step)
		if uerr := o.unlock(ctx, []string{fmt.Sprintf("restore refused as locked for %s", time.Since(begun).Round(time.Millisecond))}); uerr != nil {
			if hypervisor.IsNotFound(uerr) {
				return uerr
			}
			o.log.Info("the session could not be freed; retrying the restore until its deadline", "error", uerr)
		}
		step = OpStep{Name: name, Deadline: s.RestoreTimeout}
		begun = time.Now()
	}
}

// noWayToFree reports a driver that can neither unlock nor kill: waiting
// is all there is, and the first round of retries goes on to the
// deadline.
func (o *op) noWayToFree() bool {
	return !o.caps.Has(hypervisor.CapUnlock) && !o.caps.Has(hypervisor.CapStopEmergency)
}

// restoreFailed records the failed restore step and returns its error:
// when the deadline cut the last try short after the hypervisor had
// refused, the error says what the hypervisor said.
func (o *op) restoreFailed(step OpStep, err, refusal error) error {
	if refusal != nil && !isLocked(err) && (hypervisor.CodeOf(err) == hypervisor.CodeTimeout || ctxError(err)) {
		err = o.stuck("restored", []string{fmt.Sprintf("restore (%d tries)", step.Attempts)}, refusal, hypervisor.CodeTimeout)
	}
	step.Outcome, step.Detail = "failed", err.Error()
	o.addStep(step)
	return err
}

func ctxError(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
