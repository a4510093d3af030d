package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// missingVM is a VM name no driver has; the not-found checks use it.
const missingVM = "sandbox-conformance-no-such-vm"

// missingSnapshot is a snapshot name no VM has.
const missingSnapshot = "sandbox-conformance-no-such-snapshot"

// probe is what a check works with: its reporter, its bounded context and
// helpers that fail it with the suite's words.
type probe struct {
	reporter
	s   *session
	c   *check
	ctx context.Context
	// short are the calls the check made under a short deadline, tagged so
	// that the SDK's record says whether the driver has them yet.
	short []shortCall
}

// shortCall is one call made under a short deadline.
type shortCall struct {
	tag, op, vm string
}

// Skipf skips the check, citing its clause as every skip does.
func (p *probe) Skipf(format string, args ...any) {
	p.reporter.Skipf("%s: %s", p.c.clause, fmt.Sprintf(format, args...))
}

func (p *probe) d() hypervisor.Driver { return p.s.d }
func (p *probe) vm() string           { return p.s.target.VM }
func (p *probe) snapshot() string     { return p.s.vms[p.s.target.VM].snapshot }
func (p *probe) has(c hypervisor.Capability) bool {
	return p.s.caps.Has(c)
}

func (p *probe) fatalf(format string, args ...any) {
	p.Helper()
	p.Errorf(format, args...)
	p.FailNow()
}

// within returns a context that ends after d, cancelled with the check.
func (p *probe) within(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(p.ctx, d)
	p.Cleanup(cancel)
	return ctx
}

// status is the VM's status; an error fails the check.
func (p *probe) status(vm string) hypervisor.Status {
	p.Helper()
	st, err := p.d().Status(p.ctx, vm)
	if err != nil {
		p.fatalf("status of %q: %v", vm, err)
	}
	return st
}

// waitFor waits, at most Settle, until the VM's status satisfies cond.
func (p *probe) waitFor(vm, what string, cond func(hypervisor.Status) bool) hypervisor.Status {
	p.Helper()
	st, err := p.s.waitFor(p.ctx, vm, p.s.timing.Settle, what, cond)
	if err != nil {
		p.fatalf("%v", err)
	}
	return st
}

// retry calls f until it answers something other than locked (§11.1).
func (p *probe) retry(f func() error) error {
	return p.s.retryLocked(p.ctx, f)
}

// running starts the VM and waits until it runs.
func (p *probe) running(vm string) hypervisor.Status {
	p.Helper()
	if err := p.retry(func() error { return p.d().Start(p.ctx, vm) }); err != nil {
		p.fatalf("start %q: %v", vm, err)
	}
	return p.waitFor(vm, "running", isRunning)
}

// stopped stops a running VM and waits until it is off-like and, as far
// as the driver tells, unlocked. How does not matter to the checks that
// use it, so it tries the quickest way first, an emergency stop, and the
// forceful method if that does not get the VM off within the margin.
func (p *probe) stopped(vm string) hypervisor.Status {
	p.Helper()
	if !p.s.kill(p.ctx, vm) {
		m := p.s.forcefulStop()
		if m == "" {
			p.fatalf("the check needs stop.poweroff or stop.emergency")
		}
		if err := p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }); err != nil {
			p.fatalf("stop %q with %s: %v", vm, m, err)
		}
	}
	p.waitFor(vm, "off", isOff)
	if p.has(hypervisor.CapLockState) {
		return p.waitFor(vm, "unlocked", isUnlocked)
	}
	return p.status(vm)
}

// lingering runs LockVM and stops it, leaving it off with the session lock
// it keeps until Unlock. The lock is only waited out if the driver cannot
// report it; the caller finds it held.
func (p *probe) lingering() string {
	p.Helper()
	vm := p.s.target.LockVM
	p.running(vm)
	m := p.s.forcefulStop()
	if m == "" {
		m = hypervisor.StopACPI
	}
	if err := p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }); err != nil {
		p.fatalf("stop %q with %s: %v", vm, m, err)
	}
	p.waitFor(vm, "off", isOff)
	return vm
}

// code asserts that err is a contract error with code want.
func (p *probe) code(err error, want hypervisor.Code, format string, args ...any) bool {
	p.Helper()
	what := fmt.Sprintf(format, args...)
	if err == nil {
		p.Errorf("%s: succeeded, want %s", what, want)
		return false
	}
	var he *hypervisor.Error
	if !errors.As(err, &he) {
		p.Errorf("%s: error %T %q is not a *hypervisor.Error, want code %s", what, err, err, want)
		return false
	}
	if he.Code != want {
		p.Errorf("%s: answered %s, want %s (error: %v)", what, he.Code, want, err)
		return false
	}
	return true
}

// ok asserts that err is nil.
func (p *probe) ok(err error, format string, args ...any) bool {
	p.Helper()
	if err != nil {
		p.Errorf("%s: %v", fmt.Sprintf(format, args...), err)
		return false
	}
	return true
}

// hostFile writes data to a fresh file on the host, removed with the check.
func (p *probe) hostFile(data []byte) string {
	p.Helper()
	dir := p.hostDir()
	f := filepath.Join(dir, "in-"+token())
	if err := os.WriteFile(f, data, 0o644); err != nil {
		p.fatalf("host file: %v", err)
	}
	return f
}

// hostDir is a fresh directory on the host, removed with the check.
func (p *probe) hostDir() string {
	p.Helper()
	dir, err := os.MkdirTemp("", "sandbox-conformance-")
	if err != nil {
		p.fatalf("host directory: %v", err)
	}
	p.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// guestPath names a fresh file in the guest's directory, with its
// separator.
func (p *probe) guestPath(prefix string) string {
	dir := p.s.guest.Dir
	name := "sandbox-conformance-" + prefix + "-" + token()
	if strings.Contains(dir, `\`) {
		return strings.TrimRight(dir, `\`) + `\` + name
	}
	return path.Join(dir, name)
}

// cat is the request that prints the guest file f.
func (p *probe) cat(f string) hypervisor.ExecRequest {
	c := p.s.guest.Cat
	return hypervisor.ExecRequest{Path: c[0], Args: append(append([]string{}, c[1:]...), f)}
}

// guestReady waits until the running VM's guest accepts guest operations:
// a guest not ready yet answers invalid state (§9.4).
func (p *probe) guestReady(vm string) {
	p.Helper()
	probeFile := ""
	if !p.has(hypervisor.CapGuestExec) {
		probeFile = p.hostFile([]byte("ready?\n"))
	}
	guest := p.guestPath("ready")
	ctx, cancel := context.WithTimeout(p.ctx, p.s.timing.Settle)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		var err error
		if probeFile == "" {
			req := p.cat(guest)
			req.Timeout = p.s.timing.Settle
			_, err = p.d().Exec(ctx, vm, req)
		} else {
			err = p.d().CopyIn(ctx, vm, probeFile, guest)
		}
		if hypervisor.CodeOf(err) != hypervisor.CodeInvalidState || err == nil {
			return
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			p.fatalf("the guest of %q did not accept guest operations within %s: %v", vm, p.s.timing.Settle, err)
		case <-t.C:
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// drain reads ch until it closes, for at most d; it reports whether it
// closed. A stream that outlives its context is Watch/ClosesWhenContextEnds'
// business; elsewhere the suite just stops listening.
func drain(ch <-chan hypervisor.Status, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case _, open := <-ch:
			if !open {
				return true
			}
		case <-t.C:
			return false
		}
	}
}

// timed calls f and returns how long it took.
func timed(f func()) time.Duration {
	begun := time.Now()
	f()
	return time.Since(begun)
}

// token is a short random name part, so that runs do not trip over files a
// previous run left.
func token() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// opCall is one contract operation on a VM, called for its error only.
type opCall struct {
	name string
	cap  hypervisor.Capability // "" for status and start
	call func(ctx context.Context, vm string) error
}

// vmOps lists the operations that take a VM, each behind its capability;
// they are harmless on a VM at its baseline (off, unlocked, at its
// snapshot) when the driver keeps the contract.
func (p *probe) vmOps() []opCall {
	d := p.d()
	host := p.hostFile([]byte("sandbox conformance\n"))
	out := filepath.Join(filepath.Dir(host), "out-"+token())
	guest := p.guestPath("op")
	snap := p.snapshot()
	ops := []opCall{
		{hypervisor.OpStatus, "", func(ctx context.Context, vm string) error {
			_, err := d.Status(ctx, vm)
			return err
		}},
		{hypervisor.OpStart, "", func(ctx context.Context, vm string) error { return d.Start(ctx, vm) }},
	}
	for _, m := range hypervisor.StopMethods {
		ops = append(ops, opCall{"stop " + string(m), m.Capability(), func(ctx context.Context, vm string) error {
			return d.Stop(ctx, vm, m)
		}})
	}
	return append(ops,
		opCall{hypervisor.OpUnlock, hypervisor.CapUnlock, func(ctx context.Context, vm string) error { return d.Unlock(ctx, vm) }},
		opCall{hypervisor.OpRestore, hypervisor.CapRestore, func(ctx context.Context, vm string) error {
			return d.Restore(ctx, vm, snap)
		}},
		opCall{hypervisor.OpCleanup, hypervisor.CapCleanup, func(ctx context.Context, vm string) error {
			_, err := d.Cleanup(ctx, vm, hypervisor.CleanupRequest{})
			return err
		}},
		opCall{hypervisor.OpCopyIn, hypervisor.CapGuestCopyIn, func(ctx context.Context, vm string) error {
			return d.CopyIn(ctx, vm, host, guest)
		}},
		opCall{hypervisor.OpExec, hypervisor.CapGuestExec, func(ctx context.Context, vm string) error {
			_, err := d.Exec(ctx, vm, p.cat(guest))
			return err
		}},
		opCall{hypervisor.OpCopyOut, hypervisor.CapGuestCopyOut, func(ctx context.Context, vm string) error {
			return d.CopyOut(ctx, vm, guest, out)
		}},
		opCall{hypervisor.OpWatch, hypervisor.CapWatch, func(ctx context.Context, vm string) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ch, err := d.Watch(ctx, vm)
			if err == nil {
				cancel()
				drain(ch, p.s.timing.Margin)
			}
			return err
		}},
	)
}

// declaredOps is vmOps without the operations behind capabilities the
// driver does not declare, and with names, only those whose name begins
// with one of them ("stop" selects every stop method).
func (p *probe) declaredOps(names ...string) []opCall {
	var out []opCall
	for _, op := range p.vmOps() {
		if op.cap != "" && !p.has(op.cap) {
			continue
		}
		if len(names) > 0 && !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(op.name, n) }) {
			continue
		}
		out = append(out, op)
	}
	return out
}

// notFound checks that every declared operation among names answers not
// found for a VM that does not exist (§11.3).
func (p *probe) notFound(names ...string) {
	p.Helper()
	for _, op := range p.declaredOps(names...) {
		p.code(op.call(p.ctx, missingVM), hypervisor.CodeNotFound, "%s of a VM that does not exist", op.name)
	}
}
