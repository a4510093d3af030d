package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func isOff(st hypervisor.Status) bool { return st.Power.IsOff() }

func isUnlocked(st hypervisor.Status) bool { return st.Lock == hypervisor.LockUnlocked }

func isOffAndUnlocked(st hypervisor.Status) bool { return isOff(st) && isUnlocked(st) }

// stopLadder brings the VM to an off-like state by climbing the rungs in
// order. Each rung issues its stop (retrying a locked session), then waits
// for the state within the rung's deadline; when the deadline passes, or
// the hypervisor refuses, the next rung takes over. A VM already off gets no
// stop command at all (§5.2 makes that safe anyway, but the operator's log
// should show that nothing was sent).
func (o *op) stopLadder(ctx context.Context, methods []hypervisor.StopMethod) (hypervisor.Status, error) {
	st := o.last
	if isOff(st) {
		o.addStep(OpStep{Name: "stop", Outcome: "already off", Detail: "no stop command sent"})
		return st, nil
	}
	var tried []string
	var last error
	code := hypervisor.CodeUnsupported // until a rung runs: nothing could stop this VM
	for _, m := range methods {
		name := "stop " + string(m)
		if !o.caps.Has(m.Capability()) {
			o.fallback("the driver has no %s; rung %q skipped", m.Capability(), m)
			o.addStep(OpStep{Name: name, Outcome: "skipped", Detail: "driver lacks " + string(m.Capability())})
			tried = append(tried, fmt.Sprintf("%s (skipped: the driver lacks %s)", m, m.Capability()))
			continue
		}
		if m == hypervisor.StopACPI && st.Power != hypervisor.PowerRunning {
			why := fmt.Sprintf("a %s guest cannot answer the power button", st.Power)
			o.addStep(OpStep{Name: name, Outcome: "skipped", Detail: why})
			tried = append(tried, fmt.Sprintf("%s (skipped: %s)", m, why))
			if code == hypervisor.CodeUnsupported {
				code = hypervisor.CodeInvalidState // the VM's state, not the driver, stood in the way
			}
			continue
		}
		deadline := o.settings().RungTimeout(string(m))
		o.progress(name)
		rctx, cancel := context.WithTimeout(ctx, deadline)
		begun := time.Now()
		step := OpStep{Name: name, Deadline: deadline}
		o.stopSent = true
		// A VM on its way to running (or restoring, saving) refuses stops
		// until it gets there; retry within the rung rather than escalate.
		attempts, err := retry(rctx, o.stopRetryable(rctx), func() error { return o.vm.Driver.Stop(rctx, o.vm.Name, m) })
		step.Attempts = attempts
		stopFailed := err != nil
		if !stopFailed {
			st, err = o.waitFor(rctx, isOff)
			if err != nil && o.lastStatusErr != nil {
				step.Detail = "status: " + o.lastStatusErr.Error()
			}
		} else {
			last = err
			step.Detail = err.Error()
			// The hypervisor may refuse because the VM got off meanwhile.
			if s, serr := o.status(rctx); serr == nil {
				st = s
			}
		}
		cancel()
		step.Duration = time.Since(begun)
		tried = append(tried, string(m))
		switch {
		case isOff(st):
			step.Outcome = "off"
			o.addStep(step)
			return st, nil
		case ctx.Err() != nil:
			step.Outcome = "interrupted"
			o.addStep(step)
			return st, o.stuck("off", tried, last, hypervisor.CodeTimeout)
		case stopFailed:
			code = hypervisor.CodeOf(last)
			step.Outcome = "failed"
			if code == hypervisor.CodeInvalidState || code == hypervisor.CodeLocked {
				step.Outcome = "refused"
			}
		default:
			code = hypervisor.CodeTimeout
			step.Outcome = "deadline passed"
		}
		o.addStep(step)
		st = o.last
	}
	return st, o.stuck("off", tried, last, code)
}

// stopRetryable accepts a locked session, and a refusal from a VM in a
// transient state that ends by itself, as reasons to try the stop again;
// so is a refusal that the VM has since left behind (it was starting when
// asked and is running now).
func (o *op) stopRetryable(ctx context.Context) func(error) bool {
	return func(err error) bool {
		if isLocked(err) {
			return true
		}
		if hypervisor.CodeOf(err) != hypervisor.CodeInvalidState {
			return false
		}
		before := o.last.Power
		st, serr := o.status(ctx)
		if serr != nil {
			return false
		}
		switch st.Power {
		case hypervisor.PowerStarting, hypervisor.PowerRestoring, hypervisor.PowerSaving, hypervisor.PowerSnapshotting:
			return true
		}
		return st.Power != before && !st.Power.IsOff()
	}
}

// stuck builds the error for a VM that did not reach want; code
// classifies it (CodeTimeout when deadlines ran out).
func (o *op) stuck(want string, tried []string, last error, code hypervisor.Code) error {
	e := &StuckError{VM: o.vm.Name, Want: want, Tried: tried, Last: last, Code: code}
	if o.haveLast {
		e.State = stateWord(o.last)
	}
	return e
}

// release makes sure the session is free once the VM is off. A driver that
// reports the lock is waited on, and actively unlocked if the session does
// not go by itself; a driver that cannot report it gets the legacy fixed
// settle delay, after a stop only.
func (o *op) release(ctx context.Context) error {
	s := o.settings()
	if !o.caps.Has(hypervisor.CapLockState) {
		if !o.stopSent {
			return nil
		}
		o.settle(ctx)
		return hypervisor.FromContext(ctx, o.report.Operation, o.vm.Name)
	}
	if o.haveLast && isOffAndUnlocked(o.last) {
		return nil
	}
	o.progress("wait for release")
	begun := time.Now()
	wctx, cancel := context.WithTimeout(ctx, s.ReleaseTimeout)
	_, err := o.waitFor(wctx, isOffAndUnlocked)
	cancel()
	step := OpStep{Name: "wait for release", Deadline: s.ReleaseTimeout, Duration: time.Since(begun)}
	if err == nil {
		step.Outcome = "unlocked"
		o.addStep(step)
		return nil
	}
	if hypervisor.IsNotFound(err) {
		step.Outcome, step.Detail = "failed", err.Error()
		o.addStep(step)
		return err
	}
	if ctx.Err() != nil {
		step.Outcome = "interrupted"
		o.addStep(step)
		return o.stuck("unlocked", []string{"waiting for release"}, o.lastStatusErr, hypervisor.CodeTimeout)
	}
	step.Outcome = "deadline passed"
	o.addStep(step)
	return o.unlock(ctx, []string{fmt.Sprintf("waiting %s for release", s.ReleaseTimeout)})
}

// settle is the legacy wait: a driver that cannot report its lock gets a
// fixed delay after a stop. The operator is told once per VM and process
// why, since it is the one slow, blind step left.
func (o *op) settle(ctx context.Context) {
	d := o.settings().SettleDelay
	why := fmt.Sprintf("the driver cannot report session locks (no %s); waiting the fixed settle delay of %s",
		hypervisor.CapLockState, d)
	o.report.fallback(why)
	o.m.mu.Lock()
	first := !o.m.settleLogged[o.vm.Key()]
	o.m.settleLogged[o.vm.Key()] = true
	o.m.mu.Unlock()
	if first {
		o.log.Info("fallback: " + why)
	}
	if d == 0 {
		return
	}
	o.progress("settle (legacy)")
	begun := time.Now()
	err := delay(ctx, d)
	step := OpStep{Name: "settle (legacy)", Deadline: d, Duration: time.Since(begun), Outcome: "done"}
	if err != nil {
		step.Outcome = "interrupted"
	}
	o.addStep(step)
}

// unlock actively frees a session that the hypervisor did not release by
// itself: with the driver's unlock when it has one, else with an emergency
// stop, which kills a VM process still holding the session of an off VM
// (§5.2). A driver with neither gets more time to release it by itself: a
// power-off of an off VM sends nothing (§5.2), so there is nothing else to
// try.
func (o *op) unlock(ctx context.Context, tried []string) error {
	s := o.settings()
	uctx, cancel := context.WithTimeout(ctx, s.UnlockTimeout)
	defer cancel()
	begun := time.Now()
	var name string
	var act func() error
	switch {
	case o.caps.Has(hypervisor.CapUnlock):
		name = "unlock"
		act = func() error { return o.vm.Driver.Unlock(uctx, o.vm.Name) }
	case o.caps.Has(hypervisor.CapStopEmergency):
		name = "unlock by emergency stop"
		o.fallback("the driver has no %s; freeing the session with an emergency stop", hypervisor.CapUnlock)
		act = func() error { return o.vm.Driver.Stop(uctx, o.vm.Name, hypervisor.StopEmergency) }
	default:
		name = "wait longer for release"
		o.fallback("the driver has neither %s nor %s; giving the hypervisor %s more to release the session",
			hypervisor.CapUnlock, hypervisor.CapStopEmergency, s.UnlockTimeout)
		act = func() error { return nil }
	}
	o.progress(name)
	var last error
	attempts, err := retry(uctx, isLocked, func() error {
		if err := act(); err != nil {
			last = err
			return err
		}
		st, err := o.status(uctx)
		if err != nil {
			return err
		}
		if !isOffAndUnlocked(st) {
			return errStillLocked
		}
		return nil
	})
	step := OpStep{Name: name, Deadline: s.UnlockTimeout, Duration: time.Since(begun), Attempts: attempts, Outcome: "unlocked"}
	if err == nil {
		o.addStep(step)
		return nil
	}
	// Keep the driver's own words; "still locked" and a status read cut
	// short by the deadline say less.
	if last == nil && !errors.Is(err, errStillLocked) && uctx.Err() == nil {
		last = err
	}
	step.Outcome = "failed"
	step.Detail = fmt.Sprintf("still locked after %s", time.Since(begun).Round(time.Millisecond))
	if last != nil {
		step.Detail += ": " + last.Error()
	}
	o.addStep(step)
	code := hypervisor.CodeTimeout
	if last != nil && uctx.Err() == nil && !isLocked(last) {
		code = hypervisor.CodeOf(last)
	}
	return o.stuck("unlocked", append(tried, name), last, code)
}
