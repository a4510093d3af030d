package conformance

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

var anyGuest = []hypervisor.Capability{hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec, hypervisor.CapGuestCopyOut}

var guestChecks = []*check{
	{
		name: "Guest/UnknownVMIsNotFound", clause: "§11.3",
		summary: "every declared guest operation on a VM that does not exist answers not found",
		anyCap:  anyGuest,
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpCopyIn, hypervisor.OpExec, hypervisor.OpCopyOut) },
	},
	{
		name: "Guest/NotRunningIsInvalidState", clause: "§9.4",
		summary: "every declared guest operation on a VM that is not running answers invalid state",
		anyCap:  anyGuest,
		fn:      checkGuestOff,
	},
	{
		name: "Guest/CopyRoundTrip", clause: "§9.1", also: []string{"§9.3"},
		summary: "a file copied into the guest and back out is unchanged",
		caps:    []hypervisor.Capability{hypervisor.CapGuestCopyIn, hypervisor.CapGuestCopyOut},
		fn:      checkCopyRoundTrip,
	},
	{
		name: "Guest/ExecOutput", clause: "§9.2a", also: []string{"§9.1"},
		summary: "a command that succeeds returns exit code 0 and its stdout",
		caps:    []hypervisor.Capability{hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec},
		fn:      checkExecOutput,
	},
	{
		name: "Guest/ExitCodeAndStderr", clause: "§9.2b",
		summary: "a command that fails is a result with its non-zero exit code and stderr, not an error",
		caps:    []hypervisor.Capability{hypervisor.CapGuestExec},
		fn:      checkExecFailure,
	},
	{
		name: "Guest/OutputBounded", clause: "§9.5",
		summary: "a command that writes 1 MiB, asked for 64 KiB of it, returns at most 64 KiB and says it dropped the rest",
		caps:    []hypervisor.Capability{hypervisor.CapGuestExec},
		fn:      checkOutputBounded,
	},
	{
		name: "Guest/ExecTimeout", clause: "§9.2c",
		summary: "a command still running at its timeout is killed and answers timeout",
		caps:    []hypervisor.Capability{hypervisor.CapGuestExec},
		fn:      checkExecTimeout,
	},
}

var watchChecks = []*check{
	{
		name: "Watch/UnknownVMIsNotFound", clause: "§10.1d", also: []string{"§11.3"},
		summary: "a watch of a VM that does not exist is a not-found error, not an empty stream",
		caps:    []hypervisor.Capability{hypervisor.CapWatch},
		free:    true,
		fn:      func(p *probe) { p.notFound(hypervisor.OpWatch) },
	},
	{
		name: "Watch/FirstIsCurrentStatus", clause: "§10.1a",
		summary: "a watch first delivers the VM's current status",
		caps:    []hypervisor.Capability{hypervisor.CapWatch},
		fn:      checkWatchFirst,
	},
	{
		name: "Watch/FollowsChanges", clause: "§10.1b",
		summary: "a watch delivers the VM reaching running after a start and off after a stop",
		caps:    []hypervisor.Capability{hypervisor.CapWatch},
		anyCap:  forceful,
		fn:      checkWatchFollows,
	},
	{
		name: "Watch/ClosesWhenContextEnds", clause: "§10.1c",
		summary: "the driver closes its watch channel soon after the caller's context ends",
		caps:    []hypervisor.Capability{hypervisor.CapWatch},
		free:    true,
		fn:      checkWatchCloses,
	},
}

func checkGuestOff(p *probe) {
	for _, op := range p.declaredOps(hypervisor.OpCopyIn, hypervisor.OpExec, hypervisor.OpCopyOut) {
		p.code(op.call(p.ctx, p.vm()), hypervisor.CodeInvalidState, "%s on a VM that is off", op.name)
	}
}

// guestUp runs the VM and waits for its guest to take guest operations.
func (p *probe) guestUp() string {
	p.Helper()
	vm := p.vm()
	p.running(vm)
	p.guestReady(vm)
	return vm
}

func checkCopyRoundTrip(p *probe) {
	vm := p.guestUp()
	data := bytes.Repeat([]byte("sandbox conformance "+token()+"\n"), 4096)
	src := p.hostFile(data)
	guest := p.guestPath("copy")
	if !p.ok(p.d().CopyIn(p.ctx, vm, src, guest), "CopyIn to %s", guest) {
		return
	}
	dst := filepath.Join(filepath.Dir(src), "out-"+token())
	if !p.ok(p.d().CopyOut(p.ctx, vm, guest, dst), "CopyOut of %s", guest) {
		return
	}
	got, err := os.ReadFile(dst)
	if !p.ok(err, "read the copied-out file") {
		return
	}
	if !bytes.Equal(got, data) {
		p.Errorf("the file came back with %d bytes, went in with %d; contents differ", len(got), len(data))
	}
}

func checkExecOutput(p *probe) {
	vm := p.guestUp()
	data := []byte("sandbox conformance " + token() + "\n")
	guest := p.guestPath("exec")
	if !p.ok(p.d().CopyIn(p.ctx, vm, p.hostFile(data), guest), "CopyIn to %s", guest) {
		return
	}
	req := p.cat(guest)
	res, err := p.d().Exec(p.ctx, vm, req)
	if !p.ok(err, "Exec %s %v", req.Path, req.Args) {
		return
	}
	if res.ExitCode != 0 {
		p.Errorf("Exec %s %v exited %d, stderr %q", req.Path, req.Args, res.ExitCode, res.Stderr)
	}
	if !bytes.Equal(bytes.TrimRight(res.Stdout, "\r\n"), bytes.TrimRight(data, "\r\n")) {
		p.Errorf("Exec %s %v printed %q, want %q", req.Path, req.Args, res.Stdout, data)
	}
}

func checkExecFailure(p *probe) {
	vm := p.guestUp()
	req := p.cat(p.guestPath("missing"))
	res, err := p.d().Exec(p.ctx, vm, req)
	if !p.ok(err, "Exec %s %v of a file that does not exist: a failing command is a result, not an error", req.Path, req.Args) {
		return
	}
	if res.ExitCode == 0 {
		p.Errorf("Exec %s %v of a file that does not exist exited 0", req.Path, req.Args)
	}
	if len(bytes.TrimSpace(res.Stderr)) == 0 {
		p.Errorf("Exec %s %v exited %d with nothing on stderr", req.Path, req.Args, res.ExitCode)
	}
	p.Logf("exit code %d, stderr %q", res.ExitCode, res.Stderr)
}

// checkOutputBounded runs the flood command with max_output FloodLimit.
// A driver that keeps everything answers a result the host cannot take,
// an error here; one that keeps its bound without saying so fails too.
func checkOutputBounded(p *probe) {
	vm := p.guestUp()
	f := p.s.guest.Flood
	req := hypervisor.ExecRequest{Path: f[0], Args: f[1:], Timeout: p.s.timing.Settle, MaxOutput: FloodLimit}
	res, err := p.d().Exec(p.ctx, vm, req)
	if !p.ok(err, "Exec %s %v (writes %d bytes) with max_output %d", req.Path, req.Args, FloodSize, FloodLimit) {
		return
	}
	if res.ExitCode != 0 {
		p.Errorf("Exec %s %v exited %d, stderr %q", req.Path, req.Args, res.ExitCode, res.Stderr)
	}
	switch {
	case len(res.Stdout) > FloodLimit:
		p.Errorf("Exec with max_output %d returned %d bytes of stdout", FloodLimit, len(res.Stdout))
	case len(res.Stdout) == 0:
		p.Errorf("Exec of a command that wrote %d bytes returned no stdout", FloodSize)
	case !res.StdoutTruncated:
		p.Errorf("Exec kept %d of the %d bytes the command wrote and did not say it dropped the rest (StdoutTruncated)", len(res.Stdout), FloodSize)
	}
	p.Logf("kept %d bytes of stdout, truncated %t", len(res.Stdout), res.StdoutTruncated)
}

// execTimeout is the timeout the exec checks give a command: long enough
// for a guest to start it, short enough to be cut.
func (p *probe) execTimeout() time.Duration {
	return max(4*p.s.timing.Deadline, 200*time.Millisecond)
}

func checkExecTimeout(p *probe) {
	vm := p.guestUp()
	s := p.s.guest.Sleep
	req := hypervisor.ExecRequest{Path: s[0], Args: s[1:], Timeout: p.execTimeout()}
	var err error
	took := timed(func() { _, err = p.d().Exec(p.ctx, vm, req) })
	p.code(err, hypervisor.CodeTimeout, "Exec %s %v with timeout %s", req.Path, req.Args, req.Timeout)
	if took > req.Timeout+p.s.timing.Margin {
		p.Errorf("Exec with timeout %s answered after %s", req.Timeout, took.Round(time.Millisecond))
	}
}

// next receives from a watch within d; ok is false if the stream closed
// or nothing came.
func next(ch <-chan hypervisor.Status, d time.Duration) (st hypervisor.Status, ok bool, closed bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case st, open := <-ch:
		return st, open, !open
	case <-t.C:
		return st, false, false
	}
}

// watch opens a watch that ends with the check.
func (p *probe) watch(vm string) <-chan hypervisor.Status {
	p.Helper()
	ctx, cancel := context.WithCancel(p.ctx)
	p.Cleanup(cancel)
	ch, err := p.d().Watch(ctx, vm)
	if err != nil {
		p.fatalf("Watch %q: %v", vm, err)
	}
	return ch
}

func checkWatchFirst(p *probe) {
	vm := p.vm()
	want := p.status(vm)
	got, ok, closed := next(p.watch(vm), p.s.timing.Settle)
	switch {
	case closed:
		p.Errorf("the watch closed without delivering the current status")
	case !ok:
		p.Errorf("the watch delivered nothing within %s", p.s.timing.Settle)
	case got.Power != want.Power || got.Lock != want.Lock || got.CurrentSnapshot != want.CurrentSnapshot:
		p.Errorf("the watch first delivered %s; Status says %s", describe(got), describe(want))
	}
}

// awaitOn reads the watch until a status satisfies cond, for at most Settle.
func (p *probe) awaitOn(ch <-chan hypervisor.Status, what string, cond func(hypervisor.Status) bool) {
	p.Helper()
	deadline := time.Now().Add(p.s.timing.Settle)
	var last hypervisor.Status
	for {
		st, ok, closed := next(ch, time.Until(deadline))
		switch {
		case closed:
			p.fatalf("the watch closed before delivering %s; last delivered %s", what, describe(last))
		case !ok:
			p.fatalf("the watch delivered no %s within %s; last delivered %s", what, p.s.timing.Settle, describe(last))
		case cond(st):
			return
		}
		last = st
	}
}

func checkWatchFollows(p *probe) {
	vm := p.vm()
	ch := p.watch(vm)
	p.awaitOn(ch, "first status", func(hypervisor.Status) bool { return true })
	if !p.ok(p.retry(func() error { return p.d().Start(p.ctx, vm) }), "start") {
		return
	}
	p.awaitOn(ch, "running", isRunning)
	m := p.s.forcefulStop()
	if !p.ok(p.retry(func() error { return p.d().Stop(p.ctx, vm, m) }), "stop %s", m) {
		return
	}
	p.awaitOn(ch, "off", isOff)
}

// checkWatchCloses cancels a watch and waits for its channel to close.
// Through the wire the host's channel always closes on time, since the SDK
// ends the stream with its context; what counts is the driver's own
// channel. In process the suite watches it directly; through a plugin it
// reads the SDK's count of channels left open, which the plugin reports
// with every answer once WatchCloseGrace has passed.
func checkWatchCloses(p *probe) {
	vm := p.vm()
	if d := p.s.served(); d != nil {
		p.closes(d, vm, "the driver's own watch channel")
		return
	}
	p.closes(p.d(), vm, "the watch channel")
	diag := p.s.diagnostics()
	if diag == nil {
		p.Logf("the driver is reached neither in process nor through the SDK: only the host's side of the watch was checked")
		return
	}
	t := time.NewTimer(sdk.WatchCloseGrace + p.s.timing.Margin)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.ctx.Done():
		return
	}
	p.status(vm) // its answer carries the SDK's latest count
	if n := diag().UnclosedWatches; n > 0 {
		p.Errorf("the driver left %d watch channel(s) open after their context ended; the SDK stopped reading them after %s", n, sdk.WatchCloseGrace)
	}
}

// closes opens a watch on d, cancels it once it delivered, and fails the
// check unless its channel closes within the margin.
func (p *probe) closes(d hypervisor.Driver, vm, what string) {
	p.Helper()
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	ch, err := d.Watch(ctx, vm)
	if !p.ok(err, "Watch") {
		p.FailNow()
	}
	if _, ok, _ := next(ch, p.s.timing.Settle); !ok {
		p.fatalf("the watch delivered nothing within %s", p.s.timing.Settle)
	}
	cancel()
	if !drain(ch, p.s.timing.Margin) {
		p.Errorf("%s is still open %s after its context ended", what, p.s.timing.Margin)
	}
}
