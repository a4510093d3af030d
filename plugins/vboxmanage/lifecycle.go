package vboxmanage

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/runner"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// startedRe is startvm's success line. Some hosts print it and exit 1;
// it is the better witness of a start than the exit status.
var startedRe = regexp.MustCompile(`(?m)^VM ".*" has been successfully started\.\r?$`)

// Start runs `startvm --type headless` (§4). A refusal because the
// session is held is retried for retry.locked: right after a power-off the
// exiting VM process holds it for a while. If the VM turns out to be
// running already, Start succeeds without doing anything (§4.2).
func (d *Driver) Start(ctx context.Context, vm string) (err error) {
	const op = hypervisor.OpStart
	ctx, p, done, err := d.enter(ctx, op, vm, "", true)
	if err != nil {
		return err
	}
	defer done(&err)
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return err
	}
	d.restored.forget(vm)
	return d.retry(ctx, op, vm, 0, func() error {
		res, err := d.run(ctx, p, op, vm, runner.Call{Args: []string{"startvm", ref, "--type", "headless"}, Timeout: d.cfg.Timeouts.Start})
		if err != nil && res != nil && startedRe.Match(res.Stdout) {
			d.log.Debug("startvm failed but says the VM started", "vm", vm, "error", err)
			return nil
		}
		if !hypervisor.IsLocked(err) {
			return err
		}
		// "Already locked by a session" is also what a running VM answers.
		st, serr := d.status(ctx, p, op, vm)
		switch {
		case serr != nil:
			return err
		case st.Power == hypervisor.PowerRunning || st.Power == hypervisor.PowerStarting:
			return nil
		case !st.Power.IsOff():
			return hypervisor.NewError(hypervisor.CodeInvalidState, op, vm, "cannot start a VM that is %s", st.Raw)
		}
		return err
	})
}

// Stop asks VirtualBox to stop the VM (§5): acpipowerbutton, controlvm
// poweroff (which waits until the VM is powered off, not until its
// process has exited) or startvm --type emergencystop (which kills the VM
// process). The state is read first with the lock-free listing Status
// uses. A VM that is already off gets no command at all (§5.2), with one
// exception: an emergency stop of an off VM whose listing still shows a
// session kills the VM process that holds it, which is how a caller frees
// a VM whose exiting process will not go away.
func (d *Driver) Stop(ctx context.Context, vm string, method hypervisor.StopMethod) (err error) {
	const op = hypervisor.OpStop
	if !method.Valid() {
		e := hypervisor.Unsupported(op, vm)
		e.Message = fmt.Sprintf("unknown stop method %q", method)
		return e
	}
	ctx, p, done, err := d.enter(ctx, op, vm, method.Capability(), true)
	if err != nil {
		return err
	}
	defer done(&err)
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return err
	}
	st, err := d.status(ctx, p, op, vm)
	if err != nil {
		return err
	}
	if st.Power.IsOff() {
		// A session the listing cannot show counts as held once VirtualBox
		// refused the VM's last operation because of it.
		held := st.Lock == hypervisor.LockLocked || d.refused.held(vm)
		if method != hypervisor.StopEmergency || !held {
			return nil
		}
		_, err := d.kill(ctx, p, op, vm, ref)
		return err
	}
	return d.stop(ctx, p, op, vm, ref, method)
}

// kill runs emergencystop on an off VM whose session is held, and reports
// whether it killed a VM process. "Not locked by a session" means the
// process went away by itself meanwhile: the session is free, which is
// what the caller wants. "Does not have a VM process" means a client that
// is not a VM process (the GUI, another VBoxManage) holds the session; the
// driver may not kill it, and answers locked with VirtualBox's words
// without retrying, since such a holder lets go when its user decides.
func (d *Driver) kill(ctx context.Context, p *probe, op, vm, ref string) (bool, error) {
	_, err := d.run(ctx, p, op, vm, runner.Call{Args: []string{"startvm", ref, "--type", "emergencystop"}, Timeout: d.cfg.Timeouts.Command})
	switch code := hypervisor.CodeOf(err); {
	case err == nil:
		d.log.Info("killed the VM process that kept the session of a stopped VM", "vm", vm)
		return true, nil
	case code == hypervisor.CodeInvalidState && strings.Contains(firstMessage(err), "is not locked by a session"):
		return false, nil
	case code == hypervisor.CodeLocked && strings.Contains(firstMessage(err), "does not have a VM process"):
		return false, &hypervisor.Error{Code: hypervisor.CodeLocked, Op: op, VM: vm, Err: err,
			Message: "the session is held by a client that is not a VM process: " + firstMessage(err)}
	}
	return false, err
}

// stop sends one stop command for op, retrying lock refusals.
func (d *Driver) stop(ctx context.Context, p *probe, op, vm, ref string, method hypervisor.StopMethod) error {
	d.restored.forget(vm)
	call := runner.Call{Timeout: d.cfg.Timeouts.Command}
	switch method {
	case hypervisor.StopACPI:
		call.Args = []string{"controlvm", ref, "acpipowerbutton"}
	case hypervisor.StopPowerOff:
		call.Args, call.Timeout = []string{"controlvm", ref, "poweroff"}, d.cfg.Timeouts.PowerOff
	case hypervisor.StopEmergency:
		call.Args = []string{"startvm", ref, "--type", "emergencystop"}
	}
	err := d.retry(ctx, op, vm, 0, func() error {
		_, err := d.run(ctx, p, op, vm, call)
		return err
	})
	if method == hypervisor.StopEmergency && hypervisor.CodeOf(err) == hypervisor.CodeInvalidState {
		// "is not locked by a session": no VM process is left to kill.
		return nil
	}
	return err
}

// Unlock waits for a session that outlived its VM process to go away
// (§6). A VM process that powered off keeps the session "unlocking"
// until it has exited, usually a second or two; if it is still there
// after unlock.grace, it is killed with emergencystop (VirtualBox 5.1+),
// after which VBoxSVC releases the session. A session held by another
// client (a VBoxManage, the GUI) cannot be killed: Unlock answers locked.
// Without emergencystop (VirtualBox 5.0) it waits until ctx ends.
func (d *Driver) Unlock(ctx context.Context, vm string) (err error) {
	const op = hypervisor.OpUnlock
	ctx, p, done, err := d.enter(ctx, op, vm, hypervisor.CapUnlock, true)
	if err != nil {
		return err
	}
	defer done(&err)
	st, err := d.status(ctx, p, op, vm)
	if err != nil {
		return err
	}
	return d.unlock(ctx, p, op, vm, st, &steps{})
}

// unlock is Unlock for callers that hold the gate and have the status.
func (d *Driver) unlock(ctx context.Context, p *probe, op, vm string, st hypervisor.Status, rec *steps) error {
	if !st.Power.IsOff() {
		return hypervisor.NewError(hypervisor.CodeInvalidState, op, vm, "the VM is %s; only a stopped VM's session can be released", st.Raw)
	}
	hidden := false
	if st.Lock != hypervisor.LockLocked {
		if !d.refused.held(vm) {
			return nil
		}
		// The listing shows no session, yet VirtualBox refused the VM's
		// last operation as locked: its holder has no name. Waiting for
		// the listing to change would wait for nothing; kill at once.
		hidden = true
	}
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return err
	}
	start := time.Now()
	waiting := rec.begin("wait-unlock")
	killAt := start.Add(d.cfg.Unlock.Grace)
	if hidden {
		killAt = start
	}
	canKill := p.caps.Has(hypervisor.CapStopEmergency)
	stillHeld := func(err error) error {
		waiting.end("timed out")
		return &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: op, VM: vm, Err: err,
			Message: fmt.Sprintf("the session of the stopped VM was still held after %s", time.Since(start).Round(time.Millisecond))}
	}
	// Each look reads the state (not the first time: the caller just did),
	// then kills the holder once the grace is over.
	looked := false
	err = wait.Until(ctx, d.policy(), func(ctx context.Context) (bool, error) {
		if looked {
			st, err := d.status(ctx, p, op, vm)
			switch {
			case err != nil && ctx.Err() != nil:
				return false, stillHeld(err)
			case err != nil:
				waiting.end("failed")
				return false, err
			case !st.Power.IsOff():
				waiting.end("failed")
				return false, hypervisor.NewError(hypervisor.CodeInvalidState, op, vm, "the VM became %s while its session was being released", st.Raw)
			case st.Lock == hypervisor.LockUnlocked:
				waiting.end("done")
				return true, nil
			}
		}
		looked = true
		if canKill && !time.Now().Before(killAt) {
			canKill = false
			kill := rec.begin("emergencystop")
			killed, err := d.kill(ctx, p, op, vm, ref)
			switch {
			case err == nil && killed:
				kill.end("done")
			case err == nil:
				kill.end("nothing to kill") // the process went away by itself just now
			case hypervisor.IsLocked(err):
				// Nothing the driver may kill; the caller decides how long
				// to keep trying.
				kill.end("held by another client")
				waiting.end("held by another client")
				return false, err
			default:
				kill.end("failed")
				waiting.end("failed")
				return false, err
			}
		}
		return false, nil
	})
	if err == context.DeadlineExceeded || err == context.Canceled { // ctx's own, not a look's
		return stillHeld(hypervisor.FromContext(ctx, op, vm))
	}
	return err
}

// Restore runs `snapshot restore NAME` or `snapshot restorecurrent` (§7).
// A refusal because the session is still held is retried for
// retry.locked, so that a restore right after a power-off waits out the
// exiting VM process instead of failing.
func (d *Driver) Restore(ctx context.Context, vm, snapshot string) (err error) {
	const op = hypervisor.OpRestore
	ctx, p, done, err := d.enter(ctx, op, vm, hypervisor.CapRestore, true)
	if err != nil {
		return err
	}
	defer done(&err)
	return d.restore(ctx, p, op, vm, snapshot)
}

func (d *Driver) restore(ctx context.Context, p *probe, op, vm, snapshot string) error {
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return err
	}
	args := []string{"snapshot", ref, "restorecurrent"}
	if snapshot != "" {
		args = []string{"snapshot", ref, "restore", snapshot}
	}
	// The mark of the last restore stays: a restore that VirtualBox refused
	// (no such snapshot, the session held) left the VM as clean as it was,
	// and one that began moved its state-change time past the mark.
	return d.retry(ctx, op, vm, 0, func() error {
		start := time.Now()
		_, err := d.run(ctx, p, op, vm, runner.Call{Args: args, Timeout: d.cfg.Timeouts.Restore})
		if err == nil {
			d.restored.set(vm, start, time.Now())
		}
		return err
	})
}

// Cleanup leaves the VM off, unlocked and, if asked, restored (§8), in as
// few invocations as the VM's state allows: a clean VM costs one status
// read. A VM with a process is powered off, a starting one once it runs
// (see forceOff); one that does not reach an off state within
// cleanup.stop_wait (a hung power-off, a VM stuck in stopping) has its
// process killed. The session is then waited for as Unlock does, and the
// snapshot restored with lock retries.
func (d *Driver) Cleanup(ctx context.Context, vm string, req hypervisor.CleanupRequest) (_ hypervisor.CleanupResult, err error) {
	const op = hypervisor.OpCleanup
	rec := &steps{}
	ctx, p, done, err := d.enter(ctx, op, vm, hypervisor.CapCleanup, true)
	if err != nil {
		return rec.result(), err
	}
	defer done(&err)
	st, err := d.status(ctx, p, op, vm)
	if err != nil {
		return rec.result(), err
	}
	if !st.Power.IsOff() {
		if st, err = d.forceOff(ctx, p, vm, st, rec); err != nil {
			return rec.result(), err
		}
	}
	if err := d.unlock(ctx, p, op, vm, st, rec); err != nil {
		return rec.result(), err
	}
	if req.Restore && len(rec.list) == 0 && d.restored.untouched(vm, req, st) {
		return rec.result(), nil
	}
	if req.Restore {
		name := req.Snapshot
		if name == "" {
			name = "current"
		}
		s := rec.begin("restore " + name)
		err := d.restore(ctx, p, op, vm, req.Snapshot)
		if hypervisor.IsLocked(err) && p.caps.Has(hypervisor.CapStopEmergency) {
			// Something the listing did not show as a session still holds
			// the VM. If it is an exiting VM process, killing it frees the
			// VM; anything else refuses and the restore's error stands.
			s.end("locked")
			kill := rec.begin("emergencystop")
			ref, kerr := d.ref(ctx, p, op, vm)
			if kerr == nil {
				_, kerr = d.kill(ctx, p, op, vm, ref)
			}
			if kerr != nil {
				kill.end("failed")
				return rec.result(), err
			}
			kill.end("done")
			s = rec.begin("restore " + name)
			err = d.restore(ctx, p, op, vm, req.Snapshot)
		}
		if err != nil {
			s.end("failed")
			return rec.result(), err
		}
		s.end("done")
	}
	return rec.result(), nil
}

// startingGrace bounds how long cleanup waits for a VM it finds starting
// to reach running (at most cleanup.stop_wait). VirtualBox refuses a
// power-off while a VM starts, and a start normally takes a few seconds;
// one that takes much longer is stuck, and its process is killed instead.
const startingGrace = 10 * time.Second

// forceOff brings a VM with a process to an off state and returns the off
// status it reached. A VM that accepts a power-off gets one; a starting VM
// is first given startingGrace to come up, since power-off is refused
// until it runs; one in any other transition is watched, and powered off
// as soon as it runs again. Whatever is not off by cleanup.stop_wait (a
// hung power-off, a VM stuck stopping or starting) has its process killed.
func (d *Driver) forceOff(ctx context.Context, p *probe, vm string, st hypervisor.Status, rec *steps) (hypervisor.Status, error) {
	const op = hypervisor.OpCleanup
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return st, err
	}
	stopBy := time.Now().Add(d.cfg.Cleanup.StopWait)
	poweredOff := false
	// Every pass waits for a change; the deadline also ends a VM that
	// keeps changing its mind.
	for pass := 0; !st.Power.IsOff() && (pass == 0 || time.Now().Before(stopBy)); pass++ {
		var reached bool
		switch {
		case st.Power == hypervisor.PowerStarting:
			until := stopBy
			if t := time.Now().Add(d.cfg.startingGrace); t.Before(until) {
				until = t
			}
			st, reached, err = d.waitState(ctx, p, vm, rec, "wait-running", until, func(st hypervisor.Status) bool {
				return st.Power != hypervisor.PowerStarting
			})
		case acceptsPowerOff(st.Power) && !poweredOff:
			poweredOff = true
			s := rec.begin("poweroff")
			// The power-off is bounded by the stop deadline too: a hung one
			// must not hold the cleanup past cleanup.stop_wait.
			pctx, cancel := context.WithDeadline(ctx, stopBy)
			err := d.stop(pctx, p, op, vm, ref, hypervisor.StopPowerOff)
			cancel()
			switch hypervisor.CodeOf(err) {
			case hypervisor.CodeNotFound, hypervisor.CodeUnavailable:
				s.end("failed")
				return st, err
			}
			if err != nil {
				// A power-off that hung or met a state change is not the
				// end: the wait below and emergencystop take over.
				s.end("failed: " + err.Error())
				if ctx.Err() != nil {
					return st, hypervisor.FromContext(ctx, op, vm)
				}
			} else {
				s.end("done")
			}
			st, reached, err = d.waitOff(ctx, p, vm, rec, stopBy, poweredOff)
		default:
			st, reached, err = d.waitOff(ctx, p, vm, rec, stopBy, poweredOff)
		}
		if err != nil {
			return st, err
		}
		if !reached {
			break
		}
	}
	if st.Power.IsOff() {
		return st, nil
	}
	if !p.caps.Has(hypervisor.CapStopEmergency) {
		return st, hypervisor.NewError(hypervisor.CodeTimeout, op, vm, "the VM is still %s after %s", st.Raw, d.cfg.Cleanup.StopWait)
	}
	s := rec.begin("emergencystop")
	if err := d.stop(ctx, p, op, vm, ref, hypervisor.StopEmergency); err != nil {
		s.end("failed")
		return st, err
	}
	s.end("done")
	st, _, err = d.waitState(ctx, p, vm, rec, "wait-off", time.Now().Add(d.cfg.Cleanup.StopWait), func(st hypervisor.Status) bool {
		return st.Power.IsOff()
	})
	if err != nil || st.Power.IsOff() {
		return st, err
	}
	return st, hypervisor.NewError(hypervisor.CodeTimeout, op, vm, "the VM is still %s after its process was killed", st.Raw)
}

// waitOff waits for an off state until stopBy, and also stops waiting when
// the VM reaches a state that needs another action: starting, or able to
// take the power-off it has not been sent yet (a restore or live snapshot
// that ended running).
func (d *Driver) waitOff(ctx context.Context, p *probe, vm string, rec *steps, stopBy time.Time, poweredOff bool) (hypervisor.Status, bool, error) {
	return d.waitState(ctx, p, vm, rec, "wait-off", stopBy, func(st hypervisor.Status) bool {
		return st.Power.IsOff() || st.Power == hypervisor.PowerStarting || (acceptsPowerOff(st.Power) && !poweredOff)
	})
}

// acceptsPowerOff reports the states in which controlvm poweroff is
// accepted (FACTS §3.2).
func acceptsPowerOff(p hypervisor.PowerState) bool {
	switch p {
	case hypervisor.PowerRunning, hypervisor.PowerPaused, hypervisor.PowerStuck:
		return true
	}
	return false
}

// waitState polls the VM's status, recorded as action, until done says so
// (reached) or until passes, and returns the last status.
func (d *Driver) waitState(ctx context.Context, p *probe, vm string, rec *steps, action string, until time.Time, done func(hypervisor.Status) bool) (st hypervisor.Status, reached bool, err error) {
	const op = hypervisor.OpCleanup
	s := rec.begin(action)
	wctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	err = wait.Until(wctx, d.policy(), func(wctx context.Context) (bool, error) {
		st, err = d.status(ctx, p, op, vm)
		if err != nil {
			return false, err
		}
		return done(st), nil
	})
	switch {
	case err == nil && (st.Power.IsOff() || (action == "wait-running" && st.Power == hypervisor.PowerRunning)):
		s.end("done")
		return st, true, nil
	case err == nil:
		s.end("now " + st.Raw)
		return st, true, nil
	case ctx.Err() != nil:
		s.end("timed out")
		return st, false, hypervisor.FromContext(ctx, op, vm)
	case wctx.Err() != nil:
		s.end("still " + st.Raw)
		return st, false, nil
	}
	s.end("failed")
	return st, false, err
}

// steps records what a cleanup did, for its report.
type steps struct {
	list []hypervisor.CleanupStep
}

// step is one recorded action in progress.
type step struct {
	rec   *steps
	i     int
	start time.Time
}

func (r *steps) begin(action string) *step {
	r.list = append(r.list, hypervisor.CleanupStep{Action: action, Outcome: "started"})
	return &step{rec: r, i: len(r.list) - 1, start: time.Now()}
}

func (s *step) end(outcome string) {
	s.rec.list[s.i].Duration = time.Since(s.start)
	s.rec.list[s.i].Outcome = outcome
}

func (r *steps) result() hypervisor.CleanupResult {
	return hypervisor.CleanupResult{Steps: r.list}
}

// firstMessage is a contract error's own message, or its text.
func firstMessage(err error) string {
	var e *hypervisor.Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	return err.Error()
}
