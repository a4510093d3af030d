package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/sdk/wait"
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

// runTask runs one task on a leased VM and says what it left the VM as.
func (e *Engine) runTask(ctx context.Context, lease *lifecycle.Lease, t Task, r *Result) Outcome {
	vm := lease.VM()
	r.VM, r.Plugin = vm.Name, vm.Plugin
	// Whatever an earlier run that crashed left (the VM running, paused,
	// aborted, locked, off its snapshot, its lease holder dead) is cleaned
	// before the sample comes near the VM; the report says so.
	e.transition(t, r, StepPreparing, "")
	prep, err := lease.Reconcile(ctx)
	r.Prepare = prep
	if err == nil && prep.Reconciled {
		e.log.Info("VM left behind by an earlier run; cleaned before the task", "vm", vm.Name, "sample", t.Sample.Name)
	}
	failed := StepPreparing
	if err != nil && ctx.Err() == nil {
		// The sample never reached this VM: another VM of the profile may
		// take the task.
		why := fmt.Sprintf("could not be made ready: %v", err)
		out := Outcome{State: VMUnusable, Reason: why}
		var qe *lifecycle.QuarantineError
		switch {
		case errors.As(err, &qe):
			out = Outcome{State: VMQuarantined, Reason: fmt.Sprintf("quarantined since %s: %s", qe.Since.Format(time.RFC3339), qe.Reason)}
		case prep != nil && prep.Quarantined:
			out = Outcome{State: VMQuarantined, Reason: "quarantined: " + why}
		case errors.Is(err, hypervisor.ErrNotFound):
			// No such VM: nothing to keep anyone from, nothing to look at.
		default:
			// The VM could not even be read: in whatever state it is, it
			// must not serve until someone has looked at it.
			if e.m.Quarantine(ctx, vm, why) == nil {
				out = Outcome{State: VMQuarantined, Reason: "quarantined: " + why}
			}
		}
		r.Skipped = append(r.Skipped, SkippedVM{VM: vm.Name, Reason: out.Reason})
		r.VM, r.Plugin, r.Prepare = "", "", nil
		e.transition(t, r, StepQueued, vm.Name+" "+out.Reason)
		return out
	}
	if err == nil {
		failed, err = e.analyze(ctx, lease, t, r)
	}

	// Whatever happened, the VM is cleaned, even when the task was
	// interrupted: the cleanup has its own deadline (cleanup_timeout).
	e.transition(t, r, StepCleaning, "")
	cleanup, cerr := lease.Cleanup(context.WithoutCancel(ctx), lifecycle.WithRestore(true))
	r.Cleanup = cleanup
	out := Outcome{State: VMUsable}
	if cerr != nil {
		out = Outcome{State: VMUnusable, Reason: fmt.Sprintf("cleanup after a task failed: %v", cerr)}
		quarantined := cleanup != nil && cleanup.Quarantined
		if !quarantined && failed != StepPreparing {
			// The cleanup could not even read the VM (the hypervisor is
			// down, say), but this task used it: it is not clean.
			quarantined = e.m.Quarantine(ctx, vm, "the cleanup after a task failed: "+cerr.Error()) == nil
		}
		if quarantined {
			r.Quarantined = cerr.Error()
			out = Outcome{State: VMQuarantined, Reason: "quarantined after a task: " + cerr.Error()}
		}
		if err == nil {
			// The analysis result stands; the task still failed.
			failed, err = StepCleaning, fmt.Errorf("cleanup failed, VM quarantined: %w", cerr)
		}
	}
	switch {
	case err == nil:
		e.finish(t, r, StepDone, "", nil)
	case ctx.Err() != nil:
		e.finish(t, r, StepCancelled, failed, fmt.Errorf("interrupted during %s; the VM was cleaned: %w", failed, err))
	default:
		e.finish(t, r, StepFailed, failed, err)
	}
	return out
}

// analyze runs the steps from restoring to collecting and returns the
// first that failed, with why.
func (e *Engine) analyze(ctx context.Context, lease *lifecycle.Lease, t Task, r *Result) (Step, error) {
	vm := lease.VM()
	p := t.Profile
	s := t.Sample
	vars := map[string]string{"name": SafeName(s.Name), "sha256": s.SHA256}
	guestSample := config.Expand(p.SamplePath, vars)
	vars["sample"] = guestSample

	e.transition(t, r, StepRestoring, "")
	rep, err := lease.Restore(ctx)
	r.Restore = rep
	if err != nil {
		return StepRestoring, err
	}

	// A start slot is held until the guest is ready: booting is what
	// loads a host, not the start call.
	e.transition(t, r, StepStarting, "")
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

	e.transition(t, r, StepWaitingGuest, "")
	copied, err := e.waitGuest(ctx, t, r, vm, guestSample)
	release()
	if err != nil {
		return StepWaitingGuest, err
	}
	if !copied {
		e.transition(t, r, StepCopying, "")
		cctx, cancel := context.WithTimeout(ctx, p.CopyTimeout)
		err = vm.Driver.CopyIn(cctx, vm.Name, s.Path, guestSample)
		cancel()
		if err != nil {
			return StepCopying, err
		}
	}

	e.transition(t, r, StepAnalyzing, "")
	args := make([]string, len(p.Command)-1)
	for i, a := range p.Command[1:] {
		args[i] = config.Expand(a, vars)
	}
	ectx, cancel := context.WithTimeout(ctx, p.Timeout+execGrace(p.Timeout))
	res, err := vm.Driver.Exec(ectx, vm.Name, hypervisor.ExecRequest{Path: config.Expand(p.Command[0], vars), Args: args,
		Timeout: p.Timeout, MaxOutput: p.MaxOutput})
	cancel()
	if err != nil {
		if hypervisor.CodeOf(err) == hypervisor.CodeTimeout && ctx.Err() == nil {
			return StepAnalyzing, fmt.Errorf("the analysis command ran past its timeout (%s) and was killed: %w", p.Timeout, err)
		}
		return StepAnalyzing, err
	}
	code := res.ExitCode
	r.ExitCode, r.Stdout, r.Stderr = &code, string(res.Stdout), string(res.Stderr)
	r.StdoutTruncated, r.StderrTruncated = res.StdoutTruncated, res.StderrTruncated
	r.Verdict, r.Rule = Judge(p.Verdict, res.ExitCode, res.Stdout, res.Stderr)

	if len(p.Artifacts) > 0 {
		e.transition(t, r, StepCollecting, "")
		c := collector{dir: t.Dir, sub: path.Join(p.Name, "artifacts"), driver: vm.Driver, vm: vm.Name, timeout: p.CopyTimeout,
			maxCount: p.ArtifactsMaxCount, maxSize: p.ArtifactsMaxSize}
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
func (e *Engine) waitGuest(ctx context.Context, t Task, r *Result, vm lifecycle.VM, guestSample string) (copied bool, err error) {
	p := t.Profile
	wctx, cancel := context.WithTimeout(ctx, p.ReadyTimeout)
	defer cancel()
	attempts := 0
	var last error
	err = wait.Until(wctx, readyPolicy, func(ctx context.Context) (bool, error) {
		attempts++
		asked := time.Now().UTC()
		last = e.probe(ctx, vm, p, t.Sample.Path, guestSample)
		switch {
		case last == nil:
			if p.ReadyCommand == nil {
				e.transitionAt(t, r, StepCopying, asked, "the guest accepted the sample")
			}
			return true, nil
		case notReady(last):
			return false, nil
		default:
			return false, last
		}
	})
	switch {
	case err == nil:
		return p.ReadyCommand == nil, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case wctx.Err() != nil:
		return false, hypervisor.NewError(hypervisor.CodeTimeout, "wait-guest", vm.Name,
			"the guest was not ready within ready_timeout (%s, %d attempts); it last answered: %v", p.ReadyTimeout, attempts, last)
	}
	return false, err
}

// readyPolicy is how often a guest is asked whether it is ready: at once,
// then after 20 ms, half as long again each time, at most a second apart.
// Every moment a ready guest waits is the task's, so the first asks come
// quickly, while a guest that boots for minutes is asked once a second.
var readyPolicy = wait.Policy{Initial: 20 * time.Millisecond, Max: time.Second, Factor: 1.5}

// errProbe is a ready_command that ran and did not exit 0: ask again.
var errProbe = errors.New("ready_command did not succeed")

// probe asks once whether the guest is ready.
func (e *Engine) probe(ctx context.Context, vm lifecycle.VM, p config.Profile, hostSample, guestSample string) error {
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
