package conformance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

var deadlineChecks = []*check{
	{
		name: "Deadlines/AnswerInTime", clause: "§12.1",
		summary: "operations given a short deadline answer within it plus the margin, with timeout if they did not finish",
		fn:      checkAnswerInTime,
	},
	{
		name: "Deadlines/RestoreGivesUp", clause: "§12.1",
		summary: "a restore cut short by its deadline answers timeout and is no longer restoring a moment later",
		caps:    []hypervisor.Capability{hypervisor.CapRestore},
		needs:   []need{needDeadline},
		fn:      checkRestoreGivesUp,
	},
	{
		name: "Deadlines/CleanupGivesUp", clause: "§12.1",
		summary: "a cleanup cut short by its deadline answers timeout and is no longer restoring a moment later",
		caps:    []hypervisor.Capability{hypervisor.CapCleanup, hypervisor.CapRestore},
		anyCap:  forceful,
		needs:   []need{needDeadline},
		fn:      checkCleanupGivesUp,
	},
	{
		name: "Deadlines/ExecContext", clause: "§12.1",
		summary: "a command outliving the caller's deadline answers timeout within the margin",
		caps:    []hypervisor.Capability{hypervisor.CapGuestExec},
		fn:      checkExecContext,
	},
}

var concurrencyChecks = []*check{
	{
		name: "Concurrency/TwoVMs", clause: "§13.1",
		summary: "two VMs started, stopped and restored at the same time all succeed",
		anyCap:  forceful,
		needs:   []need{needPeer},
		fn:      checkTwoVMs,
	},
	{
		name: "Concurrency/SameVMAtOnce", clause: "§13.1",
		summary: "two starts, then two stops, of one VM at the same time leave it consistent",
		anyCap:  forceful,
		fn:      checkSameVM,
	},
	{
		name: "Concurrency/ReadsDuringOperations", clause: "§3.6",
		summary: "Status (and ListVMs) answer while the VM is started, stopped and restored, and those operations still succeed",
		anyCap:  forceful,
		fn:      checkReadsDuring,
	},
}

// timely calls op under the short deadline and checks that it answered
// within the deadline plus the margin, with timeout if it answered late.
func (p *probe) timely(name string, op func(ctx context.Context) error) error {
	p.Helper()
	d := p.s.timing.Deadline
	ctx, cancel := context.WithTimeout(p.ctx, d)
	defer cancel()
	var err error
	took := timed(func() { err = op(ctx) })
	if took > d+p.s.timing.Margin {
		p.Errorf("%s with a %s deadline answered after %s", name, d, took.Round(time.Millisecond))
	}
	if err != nil && took >= d && hypervisor.CodeOf(err) != hypervisor.CodeTimeout {
		p.Errorf("%s answered after its %s deadline with %s, want timeout: %v", name, d, hypervisor.CodeOf(err), err)
	}
	return err
}

func checkAnswerInTime(p *probe) {
	vm := p.vm()
	p.timely("Status", func(ctx context.Context) error { _, err := p.d().Status(ctx, vm); return err })
	if p.has(hypervisor.CapList) {
		p.timely("ListVMs", func(ctx context.Context) error { _, err := p.d().ListVMs(ctx); return err })
	}
	if p.has(hypervisor.CapUnlock) {
		p.timely("Unlock", func(ctx context.Context) error { return p.d().Unlock(ctx, vm) })
	}
	if p.has(hypervisor.CapRestore) && p.snapshot() != "" {
		p.timely("Restore", func(ctx context.Context) error { return p.d().Restore(ctx, vm, p.snapshot()) })
	}
	if p.has(hypervisor.CapCleanup) {
		p.timely("Cleanup", func(ctx context.Context) error {
			_, err := p.d().Cleanup(ctx, vm, p.cleanupRequest())
			return err
		})
	}
	if p.has(hypervisor.CapWatch) {
		// A watch answers at once; its stream must end with the deadline.
		p.timely("Watch", func(ctx context.Context) error {
			ch, err := p.d().Watch(ctx, vm)
			if err != nil {
				return err
			}
			drain(ch, p.s.timing.Deadline+2*p.s.timing.Margin)
			return hypervisor.FromContext(ctx, hypervisor.OpWatch, vm)
		})
	}
}

// gaveUp checks, after an operation on vm answered timeout, that the VM is
// not still restoring a margin later: work the driver kept doing for a
// caller that had left.
func (p *probe) gaveUp(vm, op string) {
	p.Helper()
	st, err := p.s.waitFor(p.ctx, vm, p.s.timing.Margin, "a state other than restoring", func(st hypervisor.Status) bool {
		return st.Power != hypervisor.PowerRestoring
	})
	if err != nil {
		p.Errorf("%s answered timeout, yet %s later the VM is still %s: the driver kept working after the deadline",
			op, p.s.timing.Margin, describe(st))
	}
}

func checkRestoreGivesUp(p *probe) {
	vm := p.s.target.DeadlineVM
	err := p.timely("Restore", func(ctx context.Context) error { return p.d().Restore(ctx, vm, "") })
	if err == nil {
		p.Skipf("the restore of DeadlineVM %q finished within %s; it must take longer than the margin", vm, p.s.timing.Deadline)
	}
	if hypervisor.CodeOf(err) != hypervisor.CodeTimeout {
		p.fatalf("Restore with a %s deadline answered %v, want timeout", p.s.timing.Deadline, err)
	}
	p.gaveUp(vm, "Restore")
}

func checkCleanupGivesUp(p *probe) {
	vm := p.s.target.DeadlineVM
	// A VM that ran since its snapshot gives the cleanup a restore to do.
	p.running(vm)
	m := p.s.forcefulStop()
	if err := p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }); err != nil {
		p.fatalf("stop %q: %v", vm, err)
	}
	p.waitFor(vm, "off", isOff)
	if err := p.s.unlock(p.ctx, vm); err != nil {
		p.fatalf("%v", err)
	}
	err := p.timely("Cleanup", func(ctx context.Context) error {
		_, err := p.d().Cleanup(ctx, vm, hypervisor.CleanupRequest{Restore: true})
		return err
	})
	if err == nil {
		p.Skipf("the cleanup of DeadlineVM %q finished within %s; its restore must take longer than the margin", vm, p.s.timing.Deadline)
	}
	if hypervisor.CodeOf(err) != hypervisor.CodeTimeout {
		p.fatalf("Cleanup with a %s deadline answered %v, want timeout", p.s.timing.Deadline, err)
	}
	p.gaveUp(vm, "Cleanup")
}

func checkExecContext(p *probe) {
	vm := p.guestUp()
	s := p.s.guest.Sleep
	req := hypervisor.ExecRequest{Path: s[0], Args: s[1:]}
	d := p.execTimeout()
	ctx, cancel := context.WithTimeout(p.ctx, d)
	defer cancel()
	var err error
	took := timed(func() { _, err = p.d().Exec(ctx, vm, req) })
	p.code(err, hypervisor.CodeTimeout, "Exec %s %v under a %s deadline", req.Path, req.Args, d)
	if took > d+p.s.timing.Margin {
		p.Errorf("Exec under a %s deadline answered after %s", d, took.Round(time.Millisecond))
	}
}

// together runs f for each VM at the same time and returns their errors.
func together(vms []string, f func(vm string) error) error {
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(vm); err != nil {
				errs[i] = fmt.Errorf("%s: %w", vm, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func checkTwoVMs(p *probe) {
	vms := []string{p.vm(), p.s.target.PeerVM}
	ctx := p.ctx
	settle := func(what string, cond func(hypervisor.Status) bool) error {
		return together(vms, func(vm string) error { _, err := p.s.waitFor(ctx, vm, p.s.timing.Settle, what, cond); return err })
	}
	if !p.ok(together(vms, func(vm string) error {
		return p.retry(func() error { return p.d().Start(ctx, vm) })
	}), "start both at once") || !p.ok(settle("running", isRunning), "both running") {
		return
	}
	m := p.s.forcefulStop()
	if !p.ok(together(vms, func(vm string) error {
		return p.retry(func() error { return p.d().Stop(ctx, vm, m) })
	}), "stop both at once") || !p.ok(settle("off", isOff), "both off") {
		return
	}
	if !p.has(hypervisor.CapRestore) {
		return
	}
	if !p.ok(together(vms, func(vm string) error { return p.s.unlock(ctx, vm) }), "both unlocked") {
		return
	}
	p.ok(together(vms, func(vm string) error {
		snap := p.s.vms[vm].snapshot
		if snap == "" {
			return nil
		}
		return p.retry(func() error { return p.d().Restore(ctx, vm, snap) })
	}), "restore both at once")
}

// acceptable reports whether err is an answer a driver may give to the
// second of two identical operations arriving at once.
func acceptable(err error) bool {
	switch hypervisor.CodeOf(err) {
	case hypervisor.CodeLocked, hypervisor.CodeInvalidState:
		return true
	}
	return err == nil
}

func checkSameVM(p *probe) {
	vm := p.vm()
	twice := func(what string, f func() error) {
		p.Helper()
		err := together([]string{vm, vm}, func(string) error { return f() })
		for _, e := range unjoin(err) {
			if !acceptable(e) {
				p.Errorf("%s, twice at once: %v", what, e)
			}
		}
	}
	twice("start", func() error { return p.d().Start(p.ctx, vm) })
	if st := p.status(vm); st.Power.IsOff() {
		// Both refused, as locked by a lingering session: start it for real.
		p.ok(p.retry(func() error { return p.d().Start(p.ctx, vm) }), "start after two refused starts")
	}
	st := p.waitFor(vm, "running", isRunning)
	p.validStatus("after two starts", st)
	m := p.s.forcefulStop()
	twice("stop "+string(m), func() error { return p.d().Stop(p.ctx, vm, m) })
	st = p.waitFor(vm, "off", isOff)
	p.validStatus("after two stops", st)
}

func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkReadsDuring keeps reading the VM's status (and the listing) from
// another goroutine while the VM is started, stopped and restored.
func checkReadsDuring(p *probe) {
	vm := p.vm()
	ctx, cancel := context.WithCancel(p.ctx)
	var readErr error
	reads := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_, err := p.d().Status(ctx, vm)
			if err == nil && p.has(hypervisor.CapList) {
				_, err = p.d().ListVMs(ctx)
			}
			if err != nil && ctx.Err() == nil {
				readErr = err
				return
			}
			reads++
		}
	}()
	stopReads := func() {
		cancel()
		<-done
	}
	defer stopReads()
	// Locked answers are not retried here: nothing but the reads holds the
	// VM, so one would come from a read taking a session lock.
	// Locked answers are retried for at most Settle, as anywhere: a read
	// that held a session lock for long would exhaust that.
	if !p.ok(p.retry(func() error { return p.d().Start(p.ctx, vm) }), "start while reading") {
		return
	}
	p.waitFor(vm, "running", isRunning)
	m := p.s.forcefulStop()
	if !p.ok(p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }), "stop %s while reading", m) {
		return
	}
	p.waitFor(vm, "off", isOff)
	if p.has(hypervisor.CapLockState) {
		p.waitFor(vm, "unlocked", isUnlocked)
	}
	if p.has(hypervisor.CapRestore) && p.snapshot() != "" {
		p.ok(p.retry(func() error { return p.d().Restore(p.ctx, vm, p.snapshot()) }), "restore while reading")
	}
	stopReads()
	if readErr != nil {
		p.Errorf("a read failed while operations ran: %v", readErr)
	}
	p.Logf("%d reads", reads)
}
