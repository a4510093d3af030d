package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// execGrace is how long past a command's own timeout the engine waits for
// the driver to kill it and answer, before giving up on the call: a
// quarter of the timeout plus 5 s, at most 30 s.
func execGrace(timeout time.Duration) time.Duration {
	return min(5*time.Second+timeout/4, 30*time.Second)
}

// readyAttempt bounds one readiness probe, so that a guest that hangs on
// one command is asked again.
const readyAttempt = 30 * time.Second

// task is one (sample, profile) analysis. Its result is private to the
// goroutine that runs it and published into the sample's report when it
// ends.
type task struct {
	sample *sampleRun
	pool   *Pool
	idx    int
	res    *Result
}

// event records a transition and tells the observer.
func (e *Engine) event(t *task, step Step, detail string) {
	e.eventAt(t, step, time.Now().UTC(), detail)
}

func (e *Engine) eventAt(t *task, step Step, at time.Time, detail string) {
	t.res.State = step
	t.res.Transitions = append(t.res.Transitions, Transition{Step: step, At: at, Detail: detail})
	fields := []any{"sample", t.sample.sample.Name, "profile", t.res.Profile}
	if t.res.VM != "" {
		fields = append(fields, "vm", t.res.VM)
	}
	if detail != "" {
		fields = append(fields, "detail", detail)
	}
	e.log.Info(string(step), fields...)
	if e.onEvent != nil {
		e.onEvent(Event{Sample: t.sample.sample.Name, SHA256: t.sample.sample.SHA256, Profile: t.res.Profile,
			VM: t.res.VM, Step: step, At: at, Detail: detail})
	}
}

// finish ends a task and publishes its result; the sample's report is
// written once its last task has ended.
func (e *Engine) finish(t *task, state, failed Step, err error) {
	r := t.res
	if state != StepDone {
		r.FailedStep = failed
		if err != nil {
			r.Error = err.Error()
		}
	}
	if r.Verdict == "" {
		r.Verdict = VerdictError
	}
	e.event(t, state, r.Error)
	sr := t.sample
	sr.mu.Lock()
	*sr.report.Results[t.idx] = *r
	sr.mu.Unlock()
	if werr := e.complete(sr); werr != nil {
		e.log.Error("cannot write the report", "sample", sr.sample.Path, "error", werr)
		sr.mu.Lock()
		sr.err = werr
		sr.mu.Unlock()
	}
}

// runTask runs one task on a leased VM. It returns why the VM must leave
// the run (it is quarantined or could not be made ready), or "".
func (e *Engine) runTask(ctx context.Context, lease *lifecycle.Lease, t *task) (unusable string) {
	vm := lease.VM()
	r := t.res
	r.VM, r.Plugin = vm.Name, vm.Plugin
	// Whatever an earlier run that crashed left (the VM running, paused,
	// saved, locked, off its snapshot, its lease holder dead) is cleaned
	// before the sample comes near the VM; the report says so.
	e.event(t, StepPreparing, "")
	prep, err := lease.Reconcile(ctx)
	r.Prepare = prep
	if err == nil && prep.Reconciled {
		e.log.Info("VM left behind by an earlier run; cleaned before the task", "vm", vm.Name, "sample", t.sample.sample.Name)
	}
	failed := StepPreparing
	if err != nil && ctx.Err() == nil {
		// The sample never reached this VM: another VM of the profile may
		// take the task.
		reason := fmt.Sprintf("could not be made ready: %v", err)
		var qe *lifecycle.QuarantineError
		switch {
		case errors.As(err, &qe):
			reason = fmt.Sprintf("quarantined since %s: %s", qe.Since.Format(time.RFC3339), qe.Reason)
		case prep == nil || !prep.Quarantined:
			// The VM could not even be read: in whatever state it is, it
			// must not serve until someone has looked at it.
			_ = e.m.Quarantine(ctx, vm, reason)
		}
		r.Skipped = append(r.Skipped, SkippedVM{VM: vm.Name, Reason: reason})
		r.VM, r.Plugin, r.Prepare = "", "", nil
		e.event(t, StepQueued, vm.Name+" "+reason)
		return reason
	}
	if err == nil {
		failed, err = e.analyze(ctx, lease, t)
	}

	// Whatever happened, the VM is cleaned, even when the run was
	// interrupted: the cleanup has its own deadline (cleanup_timeout).
	e.event(t, StepCleaning, "")
	cleanup, cerr := lease.Cleanup(context.WithoutCancel(ctx), lifecycle.WithRestore(true))
	r.Cleanup = cleanup
	if cerr != nil {
		unusable = fmt.Sprintf("cleanup after a task failed: %v", cerr)
		quarantined := cleanup != nil && cleanup.Quarantined
		if !quarantined && failed != StepPreparing {
			// The cleanup could not even read the VM (the hypervisor is
			// down, say), but this task used it: it is not clean.
			quarantined = e.m.Quarantine(ctx, vm, "the cleanup after a task failed: "+cerr.Error()) == nil
		}
		if quarantined {
			r.Quarantined = cerr.Error()
			unusable = "quarantined after a task: " + cerr.Error()
		}
		if err == nil {
			// The analysis result stands; the task still failed.
			failed, err = StepCleaning, fmt.Errorf("cleanup failed, VM quarantined: %w", cerr)
		}
	}
	switch {
	case err == nil:
		e.finish(t, StepDone, "", nil)
	case ctx.Err() != nil:
		e.finish(t, StepCancelled, failed, fmt.Errorf("interrupted during %s; the VM was cleaned: %w", failed, err))
	default:
		e.finish(t, StepFailed, failed, err)
	}
	return unusable
}

// analyze runs the steps from restoring to collecting and returns the
// first that failed, with why.
func (e *Engine) analyze(ctx context.Context, lease *lifecycle.Lease, t *task) (Step, error) {
	vm := lease.VM()
	p := t.pool.Profile
	r := t.res
	s := t.sample.sample
	vars := map[string]string{"name": SafeName(s.Name), "sha256": s.SHA256}
	guestSample := expand(p.SamplePath, vars)
	vars["sample"] = guestSample

	e.event(t, StepRestoring, "")
	rep, err := lease.Restore(ctx)
	r.Restore = rep
	if err != nil {
		return StepRestoring, err
	}

	// A start slot is held until the guest is ready: booting is what
	// loads a host, not the start call.
	e.event(t, StepStarting, "")
	select {
	case e.starting <- struct{}{}:
	case <-ctx.Done():
		return StepStarting, ctx.Err()
	}
	held := true
	release := func() {
		if held {
			<-e.starting
			held = false
		}
	}
	defer release()
	rep, err = lease.Start(ctx)
	r.Start = rep
	if err != nil {
		return StepStarting, err
	}

	e.event(t, StepWaitingGuest, "")
	copied, err := e.waitGuest(ctx, t, vm, guestSample)
	release()
	if err != nil {
		return StepWaitingGuest, err
	}
	if !copied {
		e.event(t, StepCopying, "")
		cctx, cancel := context.WithTimeout(ctx, p.CopyTimeout)
		err = vm.Driver.CopyIn(cctx, vm.Name, s.Path, guestSample)
		cancel()
		if err != nil {
			return StepCopying, err
		}
	}

	e.event(t, StepAnalyzing, "")
	args := make([]string, len(p.Command)-1)
	for i, a := range p.Command[1:] {
		args[i] = expand(a, vars)
	}
	ectx, cancel := context.WithTimeout(ctx, p.Timeout+execGrace(p.Timeout))
	res, err := vm.Driver.Exec(ectx, vm.Name, hypervisor.ExecRequest{Path: expand(p.Command[0], vars), Args: args, Timeout: p.Timeout})
	cancel()
	if err != nil {
		if hypervisor.CodeOf(err) == hypervisor.CodeTimeout && ctx.Err() == nil {
			return StepAnalyzing, fmt.Errorf("the analysis command ran past its timeout (%s) and was killed: %w", p.Timeout, err)
		}
		return StepAnalyzing, err
	}
	code := res.ExitCode
	r.ExitCode, r.Stdout, r.Stderr = &code, string(res.Stdout), string(res.Stderr)
	r.Verdict, r.Rule = p.Rules.Judge(res.ExitCode, res.Stdout, res.Stderr)

	if len(p.Artifacts) > 0 {
		e.event(t, StepCollecting, "")
		c := collector{root: t.sample.root, rootPath: t.sample.dir, dir: path.Join(p.Name, "artifacts"),
			driver: vm.Driver, vm: vm.Name, timeout: p.CopyTimeout}
		r.Artifacts, err = c.collect(ctx, p.Artifacts)
		if err != nil {
			return StepCollecting, err
		}
	}
	return "", nil
}

// waitGuest asks the guest until it is ready, within ready_timeout: by
// the profile's ready_command, or else by offering it the sample, in
// which case it reports copied.
func (e *Engine) waitGuest(ctx context.Context, t *task, vm lifecycle.VM, guestSample string) (copied bool, err error) {
	p := t.pool.Profile
	wctx, cancel := context.WithTimeout(ctx, p.ReadyTimeout)
	defer cancel()
	begun := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for attempts := 1; ; attempts++ {
		asked := time.Now().UTC()
		err := e.probe(wctx, vm, p, t.sample.sample.Path, guestSample)
		if err == nil {
			if p.ReadyCommand == nil {
				e.eventAt(t, StepCopying, asked, "the guest accepted the sample")
			}
			return p.ReadyCommand == nil, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if !notReady(err) {
			return false, err
		}
		timer.Reset(readyPoll(time.Since(begun)))
		select {
		case <-timer.C:
		case <-wctx.Done():
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, hypervisor.NewError(hypervisor.CodeTimeout, "wait-guest", vm.Name,
				"the guest was not ready within ready_timeout (%s, %d attempts); it last answered: %v", p.ReadyTimeout, attempts, err)
		}
	}
}

// readyPoll is the wait before asking a guest again, elapsed into the
// wait: an eighth of it, between 20ms and 1s. Every moment a ready guest
// waits is the task's, so the overshoot stays within an eighth of the
// boot time, while a guest that boots for minutes is asked once a second.
func readyPoll(elapsed time.Duration) time.Duration {
	return min(max(elapsed/8, 20*time.Millisecond), time.Second)
}

// errProbe is a ready_command that ran and did not exit 0: ask again.
var errProbe = errors.New("ready_command did not succeed")

// probe asks once whether the guest is ready.
func (e *Engine) probe(ctx context.Context, vm lifecycle.VM, p Profile, hostSample, guestSample string) error {
	if p.ReadyCommand == nil {
		return vm.Driver.CopyIn(ctx, vm.Name, hostSample, guestSample)
	}
	actx, cancel := context.WithTimeout(ctx, readyAttempt)
	defer cancel()
	res, err := vm.Driver.Exec(actx, vm.Name, hypervisor.ExecRequest{Path: p.ReadyCommand[0], Args: p.ReadyCommand[1:], Timeout: readyAttempt})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("%w: exit code %d: %s", errProbe, res.ExitCode, firstLine(res.Stderr))
	}
	return nil
}

// notReady reports whether a guest operation's failure means "not yet":
// the guest is still booting (invalid state), the driver's plugin is being
// relaunched (unavailable), the session is busy (locked), one attempt ran
// out of time, or the ready command ran and failed.
func notReady(err error) bool {
	if errors.Is(err, errProbe) {
		return true
	}
	switch hypervisor.CodeOf(err) {
	case hypervisor.CodeInvalidState, hypervisor.CodeUnavailable, hypervisor.CodeLocked, hypervisor.CodeTimeout:
		return true
	}
	return false
}

func firstLine(b []byte) string {
	b = bytes.TrimSpace(b)
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}
