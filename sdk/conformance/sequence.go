package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// sequence is one run of steps from the VMs' baseline, held against the
// model.
type sequence struct {
	x   *explorer
	ctx context.Context
	vms map[string]*vmModel
	// script is the steps taken so far; dev the first deviation, after
	// which no step is taken; broken what kept the sequence from going on
	// that is no deviation (a VM that cannot be read or put back).
	script []string
	dev    *Deviation
	broken error
	log    []string
	// watches are the watches open, by VM.
	watches map[string]*watching
	// diagAt is the SDK's diagnostics when the sequence began; shortCalls
	// the calls ("restore vm") cut at a short deadline, shortTags their
	// tags, the last answered at shortEnd.
	diagAt     sdk.Diagnostics
	shortCalls map[string]bool
	shortTags  []string
	shortEnd   time.Time
	// unwatched is when the last watch through the wire ended, whose
	// channel the SDK reports unclosed only after WatchCloseGrace.
	unwatched time.Time
	dir       string
	token     string       // names the sequence's guest files apart from other sequences'
	ops       atomic.Int64 // operations issued
	ending    bool         // the steps are over: finish waits for what they promised
}

// logf notes what the model saw, for the deviation's log.
func (q *sequence) logf(format string, args ...any) {
	q.log = append(q.log, fmt.Sprintf(format, args...))
}

// found records the first deviation; the steps after it are not taken.
func (q *sequence) found(d *Deviation) {
	if d == nil || q.dev != nil {
		return
	}
	d.AtEnd = q.ending
	q.dev = d
	q.logf("deviation: %s: %s", d.key(), d.Detail)
}

// over reports whether the sequence takes no more steps.
func (q *sequence) over() bool { return q.dev != nil || q.broken != nil || q.ctx.Err() != nil }

// fail ends the sequence for a reason that is no deviation.
func (q *sequence) fail(err error) {
	if q.broken == nil {
		q.broken = err
		q.logf("the model cannot go on: %v", err)
	}
}

// read is the VM's status, under the long bound. A VM the driver cannot
// read ends the sequence: the model has nothing to hold its answers to.
func (q *sequence) read(vm string) (hypervisor.Status, bool) {
	ctx, cancel := context.WithTimeout(q.ctx, q.x.timing.Settle)
	defer cancel()
	q.x.calls.Add(1)
	st, err := q.x.s.d.Status(ctx, vm)
	if err != nil {
		if q.ctx.Err() == nil {
			q.fail(fmt.Errorf("status of %q: %w", vm, err))
		}
		return st, false
	}
	return st, true
}

// chain is why a status is read: what may have happened since the last.
type chain int

const (
	// spontaneous: nothing was asked of the VM since the last read.
	spontaneous chain = iota
	// afterOp: an operation answered since, whose own rules were held
	// against this status first.
	afterOp
	// resync: operations whose outcome the model cannot tell alone (two at
	// once, one cut short) ran since; the status is taken as it is.
	resync
)

// observe reads the VM's status and holds it against the model.
func (q *sequence) observe(v *vmModel, why chain) (hypervisor.Status, bool) {
	st, ok := q.read(v.name)
	if !ok {
		return st, false
	}
	q.see(v, st, why)
	return st, true
}

// see holds a status read for the observation chain against the model,
// and makes it the VM's last.
func (q *sequence) see(v *vmModel, st hypervisor.Status, why chain) {
	q.found(q.validStatus(v, st))
	if q.dev != nil {
		return
	}
	last := v.last
	if why == spontaneous {
		q.found(q.spontaneous(v, last, st))
	}
	if st.Power != last.Power && !last.StateChanged.IsZero() && !st.StateChanged.IsZero() &&
		!st.StateChanged.After(last.StateChanged) && why != resync {
		if st.Power.IsOff() && v.stopped {
			// Off-like with no state change to show for it, after a stop:
			// reported off while the process was still there.
			q.found(deviate(rules("§3.2c", "§3.5"), "after a stop, the VM reported off-like changed state again with nothing asked of it: it was reported off before it got there",
				"the VM was %s, then %s", describeStatus(last), describeStatus(st)))
		}
		q.found(deviate(rules("§3.5"), "the power state changed, yet the state-change time did not move on",
			"the VM was %s, then %s", describeStatus(last), describeStatus(st)))
	}
	if v.snapKnown && st.CurrentSnapshot != v.snapshot {
		q.found(deviate(rules("§3.4"), "Status names another snapshot than the one the VM was last restored to",
			"the VM was last at %q; Status says %s", v.snapshot, describeStatus(st)))
	}
	if !v.snapKnown && st.Power.IsOff() {
		v.snapshot, v.snapKnown = st.CurrentSnapshot, true
	}
	if st.Power.IsOff() {
		v.stopDue = time.Time{}
		v.acpi = false
		if v.role == roleLock && v.stopped && st.Lock == hypervisor.LockLocked {
			v.sticky = true
		}
	}
	if st.Lock == hypervisor.LockUnlocked {
		v.unlockDue = time.Time{}
		v.sticky = false
	}
	v.last = st
}

// validStatus holds any status of a VM of the target to §3.2 and §3.3a.
func (q *sequence) validStatus(v *vmModel, st hypervisor.Status) *Deviation {
	switch {
	case !st.Power.Valid():
		return deviate(rules("§3.2a"), "Status reports a power state that is not a normalized state", "status %s", describeStatus(st))
	case st.Raw == "":
		return deviate(rules("§3.2a"), "Status leaves Raw, the hypervisor's own word, empty", "status %s", describeStatus(st))
	case q.x.caps.Has(hypervisor.CapLockState) && st.Lock != hypervisor.LockLocked && st.Lock != hypervisor.LockUnlocked:
		return deviate(rules("§3.3a"), "with status.lock declared, the lock is neither locked nor unlocked", "status %s", describeStatus(st))
	case !q.x.caps.Has(hypervisor.CapLockState) && st.Lock != hypervisor.LockUnknown:
		return deviate(rules("§3.3a"), "without status.lock, the lock is not unknown", "status %s", describeStatus(st))
	case q.x.caps.Has(hypervisor.CapLockState) && withProcess(st.Power) && st.Lock == hypervisor.LockUnlocked:
		// The VM process holds the session it runs in (contract, "Words").
		return deviate(rules("§3.3b"), "a VM that has a process is reported unlocked, though its process holds its session", "status %s", describeStatus(st))
	}
	return nil
}

// spontaneous holds a change between two reads with nothing asked of the
// VM in between: only a transition under way may end (a start reaching
// running, a stop or a restore reaching off, a lingering lock going away,
// a guest obeying the power button).
func (q *sequence) spontaneous(v *vmModel, last, st hypervisor.Status) *Deviation {
	from, to := last.Power, st.Power
	changed := from != to || st.CurrentSnapshot != last.CurrentSnapshot ||
		(!st.StateChanged.Equal(last.StateChanged) && !last.StateChanged.IsZero() && !st.StateChanged.IsZero()) ||
		(last.Lock == hypervisor.LockUnlocked && st.Lock == hypervisor.LockLocked)
	if !changed {
		return nil
	}
	natural := false
	switch {
	case from == to && st.CurrentSnapshot == last.CurrentSnapshot && st.StateChanged.Equal(last.StateChanged):
		natural = last.Lock == hypervisor.LockLocked // a lock went away by itself
	case from == hypervisor.PowerStarting && (to == hypervisor.PowerRunning || to.IsOff()):
		natural = true
	case from == hypervisor.PowerStopping && (to.IsOff() || to == hypervisor.PowerStopping):
		natural = true
	case from == hypervisor.PowerRunning && (v.acpi || !v.stopDue.IsZero()) && (to == hypervisor.PowerStopping || to.IsOff()):
		natural = true
	case from == hypervisor.PowerRestoring && to.IsOff():
		natural = true
	}
	if natural && !(from == to && !st.StateChanged.Equal(last.StateChanged)) {
		return nil
	}
	if v.cutShort {
		return deviate(rules("§12.1b"), "after an operation answered timeout, the VM changed with nothing asked of it",
			"after %s answered timeout: the VM was %s, then %s", v.quietOp, describeStatus(last), describeStatus(st))
	}
	if from == to && from.IsOff() && v.stopped && st.CurrentSnapshot == last.CurrentSnapshot && !st.StateChanged.Equal(last.StateChanged) {
		return deviate(rules("§3.2c", "§3.5"), "after a stop, the VM reported off-like changed state again with nothing asked of it: it was reported off before it got there",
			"the VM was %s, then %s", describeStatus(last), describeStatus(st))
	}
	if from == to && st.CurrentSnapshot == last.CurrentSnapshot && !st.StateChanged.Equal(last.StateChanged) {
		return deviate(rules("§3.5"), "the state-change time moved while the power state stayed",
			"the VM was %s, then %s, with nothing asked of it", describeStatus(last), describeStatus(st))
	}
	// Not the driver's doing as far as the contract says (a guest may
	// power itself off): the model goes on from what it sees.
	q.logf("the VM %s changed by itself: %s, then %s", v.name, describeStatus(last), describeStatus(st))
	return nil
}

// pre is a VM's state before an operation, as the read right before it
// and the model's knowledge say.
type pre struct {
	st                                 hypervisor.Status
	off, running, starting, restoring  bool
	mayOff                             bool // on its way off: stopping, a stop accepted, the power button pressed
	locked, unlocked, sticky, lingered bool
}

func (q *sequence) pre(v *vmModel, st hypervisor.Status) pre {
	b := pre{st: st, off: st.Power.IsOff()}
	b.running = st.Power == hypervisor.PowerRunning
	b.starting = st.Power == hypervisor.PowerStarting
	b.restoring = st.Power == hypervisor.PowerRestoring
	b.mayOff = st.Power == hypervisor.PowerStopping || (!b.off && (v.acpi || !v.stopDue.IsZero()))
	b.locked = st.Lock == hypervisor.LockLocked
	b.unlocked = st.Lock == hypervisor.LockUnlocked
	b.sticky = b.off && b.locked && v.sticky
	b.lingered = b.off && b.locked && !v.sticky
	return b
}

// hasProcess: a VM process exists, by the status.
func (b pre) hasProcess() bool { return withProcess(b.st.Power) }

// withProcess reports whether a VM in power state p has a VM process.
func withProcess(p hypervisor.PowerState) bool {
	switch p {
	case hypervisor.PowerStarting, hypervisor.PowerRunning, hypervisor.PowerPaused, hypervisor.PowerStopping, hypervisor.PowerStuck:
		return true
	}
	return false
}

// allowed is the set of answers the model allows an operation, and the
// rules an answer outside it breaks.
type allowed struct {
	ok    bool // success
	codes []hypervisor.Code
	rules []string
	what  string
	// lie: a locked answer here means Status hid a held session (§3.3b)
	// or a read took one (§3.6, §2.2).
	lie bool
}

func (a allowed) permits(err error) bool {
	if err == nil {
		return a.ok
	}
	return slices.Contains(a.codes, hypervisor.CodeOf(err))
}

// join widens a with what b allows (a state the VM may have reached
// meanwhile).
func (a allowed) join(b allowed) allowed {
	a.ok = a.ok || b.ok
	for _, c := range b.codes {
		if !slices.Contains(a.codes, c) {
			a.codes = append(a.codes, c)
		}
	}
	a.lie = a.lie && b.lie
	return a
}

// mode is how an operation was issued: alone, twice at once on one VM,
// or while a read of that VM ran.
type mode struct {
	twice bool
	read  string // stepStatus or stepList: the read going on meanwhile
	// lenient: an operation cut short before may still be landing; any of
	// success, locked and invalid state is allowed.
	lenient bool
}

// answer holds an operation's answer to what the model allows.
func (q *sequence) answer(op, vm string, err error, m mode, a allowed, b pre) *Deviation {
	if err != nil && hypervisor.IsUnsupported(err) {
		return deviate(rules("§1.2b"), op+" answered unsupported, though its capability is declared", "%s of %q: %v", op, vm, err)
	}
	if a.permits(err) {
		return nil
	}
	if (m.twice || m.lenient) && isCode(err, hypervisor.CodeLocked, hypervisor.CodeInvalidState) {
		return nil
	}
	if m.lenient && err == nil {
		return nil
	}
	switch {
	case m.twice:
		rs := append(rules("§13.1b"), a.rules...)
		// The second may have found the VM as the first left it: a stop
		// on its way off, an unlocked VM, a running one, one clean.
		if r, ok := twiceRules[op]; ok && !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
		return deviate(rs, op+" issued twice at once answered neither as alone nor locked nor invalid state",
			"%s of %q, at %s: %v", op, vm, describe(b.st), err)
	case isCode(err, hypervisor.CodeLocked) && a.ok && m.read == stepStatus:
		return deviate(rules("§3.6"), op+" issued while Status ran answered locked: the read held the session",
			"%s of %q, at %s: %v", op, vm, describe(b.st), err)
	case isCode(err, hypervisor.CodeLocked) && a.ok && m.read == stepList:
		return deviate(rules("§2.2"), op+" issued while ListVMs ran answered locked: the listing held the session",
			"%s of %q, at %s: %v", op, vm, describe(b.st), err)
	case isCode(err, hypervisor.CodeLocked) && a.lie && b.unlocked:
		return deviate(rules("§3.3b"), "Status said unlocked, yet "+op+" answered locked",
			"%s of %q, at %s: %v", op, vm, describe(b.st), err)
	case isCode(err, hypervisor.CodeInvalidState) && b.off && (op == hypervisor.OpUnlock || op == hypervisor.OpRestore):
		return deviate(rules("§3.2c"), "Status said off-like, yet "+op+" answered invalid state, the answer for a VM that still has a process",
			"%s of %q, at %s: %v", op, vm, describe(b.st), err)
	case isCode(err, hypervisor.CodeInvalidState) && b.off && op == hypervisor.OpStop:
		// Either the stop refuses an off VM, or the VM was not off: a
		// stop refuses a VM on its way off.
		return deviate(append(slices.Clone(a.rules), "§3.2c"), a.what+": it answered invalid state, as for a VM still on its way off",
			"%s of %q, at %s: %v", op, vm, describe(b.st), err)
	}
	return deviate(a.rules, a.what, "%s of %q, at %s, answered %s: %v", op, vm, describe(b.st), codeName(err), err)
}

// twiceRules is the rule of an operation that finds the VM as the same
// operation, just done, left it.
var twiceRules = map[string]string{
	hypervisor.OpStart:   "§4.2",
	hypervisor.OpStop:    "§5.5",
	hypervisor.OpUnlock:  "§6.2",
	hypervisor.OpRestore: "§7.4",
	hypervisor.OpCleanup: "§8.2",
}

// detail holds an error to §11.2: a *hypervisor.Error naming the
// operation and the VM, with the driver's message. Timeouts and
// unsupported answers may come from the host or the SDK, which have no
// message of the driver's to give.
func detail(op, vm string, err error) *Deviation {
	if err == nil || isCode(err, hypervisor.CodeTimeout, hypervisor.CodeUnsupported, hypervisor.CodeUnavailable) {
		return nil
	}
	var he *hypervisor.Error
	switch {
	case !errors.As(err, &he):
		return deviate(rules("§11.2"), "an error is not a *hypervisor.Error", "%s of %q: %T %v", op, vm, err, err)
	case he.Op != op:
		return deviate(rules("§11.2"), "an error names another operation", "%s of %q: Error.Op %q: %v", op, vm, he.Op, err)
	case he.VM != vm:
		return deviate(rules("§11.2"), "an error names another VM", "%s of %q: Error.VM %q: %v", op, vm, he.VM, err)
	case he.Message == "":
		return deviate(rules("§11.2"), "an error carries no message of the driver's", "%s of %q: %v", op, vm, err)
	}
	return nil
}

// result is what one operation answered.
type result struct {
	err      error
	took     time.Duration
	at       time.Time
	deadline time.Duration
	short    bool
	tag      string // the call's tag when short (sdk.TagCall)
	cleanup  hypervisor.CleanupResult
	exec     hypervisor.ExecResult
	out      []byte
}

// opName is the contract's name of a step's operation, as errors carry it.
func opName(op string) string {
	switch op {
	case stepCat, stepSleep, stepFlood:
		return hypervisor.OpExec
	}
	return op
}

// capOf is the capability behind a step's operation; "" for none.
func capOf(st Step) hypervisor.Capability {
	switch st.Op {
	case stepList:
		return hypervisor.CapList
	case stepStop:
		return st.Method.Capability()
	case stepUnlock:
		return hypervisor.CapUnlock
	case stepRestore:
		return hypervisor.CapRestore
	case stepCleanup:
		return hypervisor.CapCleanup
	case stepCopyIn:
		return hypervisor.CapGuestCopyIn
	case stepCopyOut:
		return hypervisor.CapGuestCopyOut
	case stepCat, stepSleep, stepFlood:
		return hypervisor.CapGuestExec
	case stepWatch:
		return hypervisor.CapWatch
	}
	return ""
}

// call issues one operation under its deadline.
func (q *sequence) call(st Step, v *vmModel) result {
	r := result{deadline: st.Deadline, short: st.Deadline > 0}
	if !r.short {
		r.deadline = q.x.timing.Settle
	}
	ctx, cancel := context.WithTimeout(q.ctx, r.deadline)
	defer cancel()
	if r.short {
		r.tag = q.x.s.tag()
		ctx = sdk.TagCall(ctx, r.tag)
	}
	d := q.x.s.d
	q.ops.Add(1)
	q.x.calls.Add(1)
	begun := time.Now()
	switch st.Op {
	case stepStart:
		r.err = d.Start(ctx, st.VM)
	case stepStop:
		r.err = d.Stop(ctx, st.VM, st.Method)
	case stepUnlock:
		r.err = d.Unlock(ctx, st.VM)
	case stepRestore:
		r.err = d.Restore(ctx, st.VM, st.Snapshot)
	case stepCleanup:
		r.cleanup, r.err = d.Cleanup(ctx, st.VM, hypervisor.CleanupRequest{Restore: st.Restore, Snapshot: st.Snapshot})
	case stepCopyIn:
		f := q.file(v, st.File)
		data := q.x.content(st.File, st.Size)
		src := filepath.Join(q.dir, fmt.Sprintf("in-%d-%d", st.File, len(q.script)))
		if err := os.WriteFile(src, data, 0o644); err != nil {
			q.fail(err)
			return r
		}
		r.err = d.CopyIn(ctx, st.VM, src, f.path)
		r.out = data
	case stepCopyOut:
		dst := filepath.Join(q.dir, fmt.Sprintf("out-%d-%d", st.File, len(q.script)))
		r.err = d.CopyOut(ctx, st.VM, q.file(v, st.File).path, dst)
		if r.err == nil {
			r.out, _ = os.ReadFile(dst)
		}
	case stepCat:
		req := hypervisor.ExecRequest{Path: q.x.guest.Cat[0], Args: append(slices.Clone(q.x.guest.Cat[1:]), q.file(v, st.File).path)}
		r.exec, r.err = d.Exec(ctx, st.VM, req)
	case stepSleep:
		s := q.x.guest.Sleep
		r.exec, r.err = d.Exec(ctx, st.VM, hypervisor.ExecRequest{Path: s[0], Args: s[1:], Timeout: st.Timeout})
	case stepFlood:
		f := q.x.guest.Flood
		r.exec, r.err = d.Exec(ctx, st.VM, hypervisor.ExecRequest{Path: f[0], Args: f[1:], Timeout: q.x.timing.Settle, MaxOutput: int64(st.Max)})
	}
	r.at = time.Now()
	r.took = r.at.Sub(begun)
	return r
}

// file is guest file n of the sequence, named on first use.
func (q *sequence) file(v *vmModel, n int) *guestFile {
	if v.files == nil {
		v.files = map[int]*guestFile{}
	}
	f := v.files[n]
	if f == nil {
		f = &guestFile{path: q.x.guestPath(fmt.Sprintf("%s-%d", q.token, n)), state: fileErased}
		v.files[n] = f
	}
	return f
}

// timely holds an answer to its deadline (§12.1a): no later than the
// deadline and the margin, and timeout if it came at the deadline. An
// operation that answered timeout under a short deadline was cut short:
// what it leaves the VM is the model's to find out, and nothing may
// happen on its behalf afterwards (§12.1b).
func (q *sequence) timely(st Step, v *vmModel, r result) *Deviation {
	m := q.x.timing.Margin
	if r.took > r.deadline+m {
		return deviate(rules("§12.1a"), st.Op+" answered long after its deadline",
			"%s under a %s deadline answered after %s: %v", st, r.deadline, r.took.Round(time.Millisecond), r.err)
	}
	if r.short && q.x.s.wrongCodeAtDeadline(r.err, r.took, r.deadline, r.tag) {
		return deviate(rules("§12.1a"), st.Op+" answered at its deadline with another code than timeout",
			"%s under a %s deadline answered after %s with %s: %v", st, r.deadline, r.took.Round(time.Millisecond), codeName(r.err), r.err)
	}
	if r.short && r.took >= r.deadline {
		// Cut at its deadline: the driver's own answer may come later.
		q.shortCalls[opName(st.Op)+" "+st.VM] = true
		q.shortTags = append(q.shortTags, r.tag)
		q.shortEnd = r.at
	}
	if r.short && isCode(r.err, hypervisor.CodeTimeout) && v != nil {
		v.cutShort = true
		v.quietOp = st.String()
		// Work that went on would end about when the whole operation would
		// have: the model looks again a little after that.
		var full time.Duration
		if st.Op == stepRestore || st.Op == stepCleanup {
			full = q.x.fullRestore(v.name)
		}
		v.quietUntil = r.at.Add(full + min(m, quietSlack))
		v.snapKnown = false
		v.cleanAt = ""
		v.unsettled = true
		if st.Op == stepStop || st.Op == stepCleanup {
			// A stop it sent before the deadline may still take the VM
			// off: the hypervisor's doing, not the driver's.
			v.acpi = true
		}
	}
	return nil
}

// quietSlack is how long past the time a whole operation would have taken
// the model looks at a VM whose operation was cut short.
const quietSlack = 200 * time.Millisecond

// aftermath follows an operation cut short by its deadline: within the
// margin the VM must stop restoring (the driver let go of it, §12.1b);
// what it is then is what it must stay, bar the transitions under way.
func (q *sequence) aftermath(v *vmModel, st Step) {
	deadline := time.Now().Add(q.x.timing.Margin)
	for !q.over() {
		now, ok := q.observe(v, resync)
		if !ok || now.Power != hypervisor.PowerRestoring {
			return
		}
		if time.Now().After(deadline) {
			q.found(deviate(rules("§12.1b"), "an operation answered timeout, yet a margin later the VM is still restoring",
				"after %s: %s", st, describeStatus(now)))
			return
		}
		pause(q.ctx, 5*time.Millisecond)
	}
}

// quietly waits out what a VM whose operation was cut short must stay,
// and looks at it then: a change nothing else explains is the driver
// working on for a caller that left (§12.1b).
func (q *sequence) quietly(v *vmModel) {
	if v.quietUntil.IsZero() || q.over() {
		return
	}
	pause(q.ctx, time.Until(v.quietUntil))
	v.quietUntil = time.Time{}
	q.observe(v, spontaneous)
}

// answered reports whether the SDK's record says the driver answered
// every call of tags; a record without tags (an older SDK) says nothing.
func answered(d sdk.Diagnostics, tags []string) bool {
	unanswered, unreached := pendingTags(d, tags)
	return d.KeepsTags && len(unanswered)+len(unreached) == 0
}

// cutShort reports whether r is an answer at a short deadline, whose
// effect the model cannot tell.
func (r result) cutShort() bool { return r.short && isCode(r.err, hypervisor.CodeTimeout) }

// run takes one step.
func (q *sequence) run(st Step) {
	q.script = append(q.script, st.String())
	q.logf("step %d: %s", len(q.script), st)
	switch {
	case st.With != nil:
		q.together(st)
	case st.Op == stepInfo:
		q.info()
	case st.Op == stepList:
		q.list()
	case st.VM == missingVM:
		q.missing(st)
	case capOf(st) != "" && !q.x.caps.Has(capOf(st)):
		q.undeclared(st)
	case st.Op == stepStatus:
		q.status(st.VM)
	case st.Op == stepWatch:
		q.watch(st.VM)
	case st.Op == stepUnwatch:
		q.unwatch(st.VM)
	case st.Op == stepSettle:
		q.settle(q.vms[st.VM], q.x.timing.Settle)
	default:
		q.operate(st)
	}
}

// info holds Info to the first answer (§1.1).
func (q *sequence) info() {
	ctx, cancel := context.WithTimeout(q.ctx, q.x.timing.Settle)
	defer cancel()
	q.ops.Add(1)
	q.x.calls.Add(1)
	info, err := q.x.s.d.Info(ctx)
	switch {
	case err != nil:
		q.found(deviate(rules("§1.1"), "Info failed", "%v", err))
	case !infoEqual(info, q.x.info):
		q.found(deviate(rules("§1.1"), "Info answered otherwise than before", "first %+v, now %+v", q.x.info, info))
	}
}

// list holds ListVMs to §2.1: every VM of the target once, in the order
// of the exploration's first listing.
func (q *sequence) list() {
	ctx, cancel := context.WithTimeout(q.ctx, q.x.timing.Settle)
	defer cancel()
	q.ops.Add(1)
	q.x.calls.Add(1)
	vms, err := q.x.s.d.ListVMs(ctx)
	if !q.x.caps.Has(hypervisor.CapList) {
		if !isCode(err, hypervisor.CodeUnsupported) {
			q.found(deviate(rules("§1.2a"), "ListVMs answered otherwise than unsupported without its capability", "answered %s: %v", codeName(err), err))
		}
		return
	}
	q.found(q.listing(vms, err))
}

func (q *sequence) listing(vms []hypervisor.VM, err error) *Deviation {
	if err != nil {
		if hypervisor.IsUnsupported(err) {
			return deviate(rules("§1.2b"), "ListVMs answered unsupported, though list is declared", "%v", err)
		}
		return deviate(rules("§2.1a"), "ListVMs failed", "%v", err)
	}
	var names []string
	for _, vm := range vms {
		if slices.Contains(names, vm.Name) {
			return deviate(rules("§2.1a"), "ListVMs lists a VM twice", "%q in %v", vm.Name, names)
		}
		names = append(names, vm.Name)
	}
	for _, vm := range q.x.targetVMs {
		if !slices.Contains(names, vm) {
			return deviate(rules("§2.1a"), "ListVMs leaves out a VM of the target", "%q is not in %v", vm, names)
		}
	}
	first := q.x.firstListing(names)
	if !slices.Equal(first, names) {
		return deviate(rules("§2.1b"), "ListVMs lists the VMs in another order than before", "first %v, now %v", first, names)
	}
	return nil
}

// status reads a VM's status as a step: a VM of the target through the
// observation chain; UnmappedVM, in a state the driver has no word for,
// must be unknown (§3.2b).
func (q *sequence) status(vm string) {
	q.ops.Add(1)
	if v := q.vms[vm]; v != nil {
		q.observe(v, spontaneous)
		return
	}
	st, ok := q.read(vm)
	if !ok {
		return
	}
	switch {
	case st.Power != hypervisor.PowerUnknown:
		q.found(deviate(rules("§3.2b"), "a VM in a state the driver has no word for is not reported unknown", "UnmappedVM %q: %s", vm, describe(st)))
	case st.Raw == "":
		q.found(deviate(rules("§3.2a"), "Status leaves Raw, the hypervisor's own word, empty", "UnmappedVM %q: %s", vm, describe(st)))
	}
}

// missing holds an operation on a VM that does not exist: not found, with
// the error's detail (§11.3, §11.2); a watch is an error, not a stream
// (§10.1d).
func (q *sequence) missing(st Step) {
	ctx, cancel := context.WithTimeout(q.ctx, q.x.timing.Settle)
	defer cancel()
	q.ops.Add(1)
	q.x.calls.Add(1)
	d := q.x.s.d
	op := opName(st.Op)
	if c := capOf(st); c != "" && !q.x.caps.Has(c) {
		q.undeclared(st)
		return
	}
	var err error
	switch st.Op {
	case stepStatus:
		_, err = d.Status(ctx, missingVM)
	case stepWatch:
		var ch <-chan hypervisor.Status
		ch, err = d.Watch(ctx, missingVM)
		if err == nil {
			cancel()
			drain(ch, q.x.timing.Margin)
			q.found(deviate(rules("§10.1d", "§11.3"), "a watch of a VM that does not exist is a stream, not an error", "Watch(%q) answered a channel", missingVM))
			return
		}
	default:
		st.VM = missingVM
		r := q.call(st, &vmModel{name: missingVM})
		err = r.err
	}
	switch {
	case !hypervisor.IsNotFound(err):
		rs := rules("§11.3")
		if st.Op == stepWatch {
			rs = rules("§10.1d", "§11.3")
		}
		q.found(deviate(rs, "an operation on a VM that does not exist did not answer not found", "%s of %q answered %s: %v", op, missingVM, codeName(err), err))
	default:
		q.found(detail(op, missingVM, err))
	}
}

// undeclared holds an operation behind a capability the driver does not
// declare: unsupported, whatever the VM's state (§1.2a).
func (q *sequence) undeclared(st Step) {
	var err error
	if st.Op == stepWatch {
		ctx, cancel := context.WithTimeout(q.ctx, q.x.timing.Settle)
		defer cancel()
		q.ops.Add(1)
		q.x.calls.Add(1)
		var ch <-chan hypervisor.Status
		if ch, err = q.x.s.d.Watch(ctx, st.VM); err == nil {
			cancel()
			drain(ch, q.x.timing.Margin)
		}
	} else {
		if v := q.vms[st.VM]; v != nil && st.Wait {
			q.settle(v, q.x.timing.Settle)
			if v.last.Power == hypervisor.PowerRunning && st.VM == q.x.s.target.VM {
				q.guestReady(v)
			}
		}
		if q.over() {
			return
		}
		v := q.vms[st.VM]
		if v == nil {
			v = &vmModel{name: st.VM} // the VM that does not exist
		}
		r := q.call(st, v)
		err = r.err
		if v := q.vms[st.VM]; v != nil {
			// A driver that did it anyway may have changed the VM.
			q.observe(v, resync)
		}
	}
	if !isCode(err, hypervisor.CodeUnsupported) {
		q.found(deviate(rules("§1.2a"), st.Op+" answered otherwise than unsupported, though its capability is not declared",
			"%s answered %s: %v", st, codeName(err), err))
	}
}

// operate takes a step that acts on a VM of the target, alone: read,
// act, read, and hold the answer and the status after it to the model.
// A locked answer the model allows is retried, as the core does (§11.1),
// unless the session stays held.
func (q *sequence) operate(st Step) {
	v := q.vms[st.VM]
	q.quietly(v)
	if st.Wait {
		q.settle(v, q.x.timing.Settle)
		if isGuest(st.Op) && v.last.Power == hypervisor.PowerRunning {
			q.guestReady(v)
		}
	}
	retryUntil := time.Now().Add(q.x.timing.Settle)
	delay := 5 * time.Millisecond
	for !q.over() {
		before, ok := q.observe(v, spontaneous)
		if !ok || q.over() {
			return
		}
		b := q.pre(v, before)
		r := q.call(st, v)
		if q.over() {
			return
		}
		q.found(q.timely(st, v, r))
		if r.cutShort() {
			q.aftermath(v, st)
			return
		}
		a := q.allowed(st, v, b)
		lenient := v.unsettled
		v.unsettled = false
		q.found(q.answer(opName(st.Op), st.VM, r.err, mode{lenient: lenient}, a, b))
		q.found(detail(opName(st.Op), st.VM, r.err))
		if q.over() {
			return
		}
		// A lock that goes by itself (a session being torn down, a process
		// on its way out) is worth waiting for; one that stays is not.
		transient := b.lingered || b.starting || b.restoring || b.st.Power == hypervisor.PowerStopping
		if isCode(r.err, hypervisor.CodeLocked) && transient && !r.short && time.Now().Before(retryUntil) {
			pause(q.ctx, delay)
			delay = min(2*delay, 100*time.Millisecond)
			continue
		}
		after, ok := q.read(v.name)
		if !ok {
			return
		}
		if st.Op == stepRestore && r.err == nil && b.off {
			q.x.timeRestore(v.name, r.took)
		}
		if lenient {
			q.effects(st, v, b, r, after)
			q.see(v, after, resync)
			return
		}
		q.found(q.post(st, v, b, r, after))
		q.effects(st, v, b, r, after)
		q.see(v, after, afterOp)
		return
	}
}

// isGuest reports whether op is a guest operation.
func isGuest(op string) bool {
	return op == stepCopyIn || op == stepCopyOut || op == stepCat || op == stepSleep || op == stepFlood
}

// allowed is what the model lets the driver answer to st on a VM in state
// b.
func (q *sequence) allowed(st Step, v *vmModel, b pre) allowed {
	ok := func(rs []string, what string) allowed { return allowed{ok: true, rules: rs, what: what} }
	only := func(rs []string, what string, codes ...hypervisor.Code) allowed {
		return allowed{codes: codes, rules: rs, what: what}
	}
	either := func(rs []string, what string, codes ...hypervisor.Code) allowed {
		return allowed{ok: true, codes: codes, rules: rs, what: what}
	}
	L, I, N := hypervisor.CodeLocked, hypervisor.CodeInvalidState, hypervisor.CodeNotFound
	transient := either(rules("§5.5"), "", L, I)
	switch st.Op {
	case stepStart:
		switch {
		case b.running && !b.mayOff:
			return ok(rules("§4.2"), "Start of a running VM did not succeed")
		case b.running || b.starting || b.mayOff || !b.off && !b.restoring:
			return either(rules("§13.1b"), "Start of a VM still on its way on or off answered neither success, locked nor invalid state", L, I)
		case b.restoring:
			return only(rules("§13.1b"), "Start of a restoring VM answered neither locked nor invalid state", L, I)
		case b.sticky:
			return only(rules("§4.3"), "Start of an off VM whose session stays held did not answer locked", L)
		case b.unlocked:
			a := ok(rules("§4.1"), "Start of an off-like, unlocked VM did not succeed")
			a.lie = true
			return a
		}
		return either(rules("§4.3"), "Start of an off-like VM whose session may be held answered neither success nor locked", L)
	case stepStop:
		switch {
		case b.off && st.Method == hypervisor.StopEmergency && !b.unlocked:
			return either(rules("§5.2b"), "an emergency stop of an off-like VM whose session is held answered neither success nor locked", L)
		case b.off:
			a := ok(rules("§5.2a"), "a stop of an off-like VM did not succeed")
			a.lie = true
			return a
		case b.running && !b.mayOff:
			return ok(rules("§5.1b"), "a stop of a running VM was not accepted")
		case b.restoring:
			return only(rules("§5.5"), "a stop of a restoring VM answered neither locked nor invalid state", L, I)
		}
		t := transient
		t.what = "a stop of a VM on its way on or off answered neither success, invalid state nor locked"
		return t
	case stepUnlock:
		switch {
		case b.off && b.unlocked:
			a := ok(rules("§6.2"), "Unlock of an unlocked VM did not succeed")
			a.lie = true
			return a
		case b.off:
			return either(rules("§6.3"), "Unlock of an off-like, locked VM answered neither success nor locked", L)
		case b.mayOff:
			return either(rules("§6.1"), "Unlock of a VM on its way off answered neither invalid state, success nor locked", L, I)
		case b.restoring:
			return only(rules("§6.1"), "Unlock of a restoring VM answered neither locked nor invalid state", L, I)
		}
		return only(rules("§6.1"), "Unlock of a VM that has a process did not answer invalid state", I)
	case stepRestore, stepCleanup:
		restoring := st.Op == stepRestore || st.Restore
		if restoring && q.unknownSnapshot(v, st.Snapshot) {
			switch {
			case st.Op == stepCleanup:
				return only(rules("§7.1b"), "a cleanup asked to restore a snapshot the VM does not have did not answer not found", N)
			case b.off && b.unlocked:
				return only(rules("§7.1b"), "Restore of a snapshot the VM does not have did not answer not found", N)
			}
			return only(rules("§7.1b"), "Restore of a snapshot the VM does not have answered neither not found, locked nor invalid state", N, L, I)
		}
		if st.Op == stepCleanup {
			return ok(rules("§8.1"), "Cleanup did not succeed")
		}
		a := func() allowed {
			switch {
			case b.off && b.sticky:
				return only(rules("§7.2b"), "Restore of an off VM whose session stays held did not answer locked", L)
			case b.off && b.unlocked:
				a := ok(rules("§7.3"), "Restore of an off-like, unlocked VM did not succeed")
				a.lie = true
				return a
			case b.off:
				return either(rules("§7.2b"), "Restore of an off-like VM whose session may be held answered neither success nor locked", L)
			case b.restoring:
				return only(rules("§7.2a"), "Restore of a restoring VM answered neither locked nor invalid state", L, I)
			}
			return only(rules("§7.2a"), "Restore of a VM that has a process did not answer invalid state", I)
		}()
		if b.mayOff {
			a = a.join(either(nil, "", L))
		}
		return a
	case stepCopyIn, stepCopyOut, stepCat, stepSleep, stepFlood:
		switch {
		case b.running || b.starting:
			// A guest not ready yet answers invalid state (§9.4); the rest
			// is the operation's own rules, held by post.
			a := allowed{ok: true, codes: []hypervisor.Code{I, hypervisor.CodeFailed, N, hypervisor.CodeTimeout}}
			if b.mayOff {
				a.codes = append(a.codes, L)
			}
			return a
		case b.mayOff:
			return either(rules("§9.4"), "a guest operation on a VM on its way off answered neither invalid state nor success", I)
		}
		return only(rules("§9.4"), "a guest operation on a VM that is not running did not answer invalid state", I)
	}
	return allowed{ok: true}
}

// unknownSnapshot reports whether a restore of snapshot must answer not
// found: a name the target does not give the VM, or no name for a VM at
// no snapshot.
func (q *sequence) unknownSnapshot(v *vmModel, snapshot string) bool {
	if snapshot == "" {
		return v.snapKnown && v.snapshot == ""
	}
	return snapshot == missingSnapshot
}

// target is the snapshot a restore of st goes to; ok is false when the
// model cannot tell (an empty name while the current one is unknown).
func (q *sequence) target(v *vmModel, snapshot string) (string, bool) {
	if snapshot != "" {
		return snapshot, true
	}
	return v.snapshot, v.snapKnown
}

// post holds the status right after a successful operation to what the
// contract says it must be, and a guest operation's result to its rules.
func (q *sequence) post(st Step, v *vmModel, b pre, r result, after hypervisor.Status) *Deviation {
	if isGuest(st.Op) {
		return q.guestPost(st, v, b, r)
	}
	if r.err != nil {
		return nil
	}
	switch st.Op {
	case stepStart:
		if b.running && !b.mayOff {
			if after.Power.IsOff() {
				// A start never takes a VM off; a guest may power itself
				// off at any time (as spontaneous allows), and a stop the
				// model lost track of (one whose process took long to
				// exit on a busy machine) may end now.
				q.logf("the VM %s went off during a Start that found it running: not the start's doing", v.name)
				return nil
			}
			// One what for both: which of the two shows depends on how soon
			// the status is read.
			if after.Power != hypervisor.PowerRunning ||
				(!b.st.StateChanged.IsZero() && !after.StateChanged.Equal(b.st.StateChanged)) {
				return deviate(rules("§4.2"), "Start of a running VM changed it (its power state, or when that last changed)",
					"before %s, after %s", describeStatus(b.st), describeStatus(after))
			}
			return nil
		}
		if b.off && after.Power != hypervisor.PowerStarting && after.Power != hypervisor.PowerRunning {
			return deviate(rules("§4.1"), "right after Start returned, the VM is neither starting nor running", "before %s, after %s", describeStatus(b.st), describeStatus(after))
		}
		if b.off && !b.st.StateChanged.IsZero() && !after.StateChanged.IsZero() && !after.StateChanged.After(b.st.StateChanged) {
			return deviate(rules("§3.5"), "Start powered the VM on, yet the state-change time did not move on", "before %s, after %s", describeStatus(b.st), describeStatus(after))
		}
	case stepStop:
		switch {
		case b.off && !(st.Method == hypervisor.StopEmergency && !b.unlocked):
			if after.Power != b.st.Power || !after.StateChanged.Equal(b.st.StateChanged) || after.CurrentSnapshot != b.st.CurrentSnapshot {
				return deviate(rules("§5.2a"), "a stop of an off-like VM changed it", "%s: before %s, after %s", st.Method, describeStatus(b.st), describeStatus(after))
			}
		case b.running && !b.mayOff && st.Method == hypervisor.StopPowerOff:
			if !after.Power.IsOff() && after.Power != hypervisor.PowerStopping {
				return deviate(rules("§5.1a"), "right after a power-off of a running VM returned, the VM is neither off-like nor stopping", "before %s, after %s", describeStatus(b.st), describeStatus(after))
			}
		}
	case stepUnlock:
		if b.off && q.x.caps.Has(hypervisor.CapLockState) && after.Lock != hypervisor.LockUnlocked {
			rs := rules("§6.3")
			if b.unlocked {
				rs = rules("§6.2")
			}
			return deviate(rs, "right after Unlock returned, Status does not say unlocked", "before %s, after %s", describeStatus(b.st), describeStatus(after))
		}
		if b.off && b.unlocked && r.took > q.x.timing.Margin {
			return deviate(rules("§6.2"), "Unlock of an unlocked VM did not return at once", "it took %s", r.took.Round(time.Millisecond))
		}
	case stepRestore:
		want, known := q.target(v, st.Snapshot)
		switch {
		case !after.Power.IsOff():
			return deviate(rules("§7.3"), "right after Restore returned, the VM is not off-like", "%s: before %s, after %s", st, describeStatus(b.st), describeStatus(after))
		case known && after.CurrentSnapshot != want && st.Snapshot == "":
			return deviate(rules("§7.1a"), "Restore with an empty name went to another snapshot than the current one", "the VM was at %q; after %s", want, describeStatus(after))
		case known && after.CurrentSnapshot != want:
			return deviate(rules("§7.3", "§3.4"), "right after Restore returned, Status names another snapshot than the one restored", "%s: after %s", st, describeStatus(after))
		}
		if known {
			if d := q.x.restoredAs(v.name, want, after.Power, v.cleanAt == want); d != nil {
				return d
			}
		}
	case stepCleanup:
		want, known := q.target(v, st.Snapshot)
		clean := b.off && b.unlocked && (!st.Restore || (known && v.cleanAt == want))
		switch {
		case !after.Power.IsOff() || after.Lock == hypervisor.LockLocked:
			return deviate(rules("§8.1"), "right after Cleanup returned, the VM is not off-like and unlocked", "%s: before %s, after %s", st, describeStatus(b.st), describeStatus(after))
		case st.Restore && known && after.CurrentSnapshot != want:
			return deviate(rules("§8.1", "§3.4"), "right after Cleanup returned, Status names another snapshot than the one asked for", "%s: wanted %q; after %s", st, want, describeStatus(after))
		case clean && q.x.caps.Has(hypervisor.CapLockState) && len(r.cleanup.Steps) > 0:
			return deviate(rules("§8.2"), "Cleanup of a clean VM took steps", "%s of a VM clean at %q: steps %+v", st, v.cleanAt, r.cleanup.Steps)
		case clean && q.x.caps.Has(hypervisor.CapLockState) && (after.Power != b.st.Power || !after.StateChanged.Equal(b.st.StateChanged)):
			return deviate(rules("§8.2"), "Cleanup of a clean VM changed it", "before %s, after %s", describeStatus(b.st), describeStatus(after))
		case b.hasProcess() && len(r.cleanup.Steps) == 0:
			return deviate(rules("§8.1"), "Cleanup of a VM that had a process reported no step", "before %s", describeStatus(b.st))
		}
		for i, s := range r.cleanup.Steps {
			if s.Action == "" || s.Outcome == "" {
				return deviate(rules("§8.1"), "a step of Cleanup has no action or no outcome", "step %d: %+v", i, s)
			}
		}
	}
	return nil
}

// guestPost holds a guest operation's answer on a running VM to its
// rules.
func (q *sequence) guestPost(st Step, v *vmModel, b pre, r result) *Deviation {
	if !b.running && !b.starting {
		return nil
	}
	err := r.err
	if isCode(err, hypervisor.CodeInvalidState) {
		return nil // the guest was not ready (§9.4)
	}
	f := q.file(v, st.File)
	// Without the wait for the guest, it may not have been ready: then
	// the answer was to be invalid state (§9.4), not a failure.
	unready := func(rs ...string) []string {
		if st.Wait {
			return rs
		}
		return append(rules("§9.4"), rs...)
	}
	switch st.Op {
	case stepCopyIn:
		if err != nil {
			return deviate(unready("§9.1"), "CopyIn into a running guest failed", "%s: %v", st, err)
		}
	case stepCopyOut:
		switch {
		case f.state == filePresent && err != nil:
			return deviate(unready("§9.3"), "CopyOut of a file copied into the running guest failed", "%s (%s): %v", st, f.path, err)
		case f.state != fileErased && err == nil && !bytes.Equal(r.out, f.data):
			return deviate(rules("§9.1", "§9.3"), "a file copied into the guest and back out differs: one of the copies changed it",
				"%s (%s): %d bytes in, %d bytes out", st, f.path, len(f.data), len(r.out))
		case f.state == fileErased && err == nil && f.data != nil && bytes.Equal(r.out, f.data):
			return deviate(rules("§7.3"), "a file written into the guest before a restore is still there after it",
				"%s (%s): the restore kept the guest's disk", st, f.path)
		}
	case stepCat:
		res := r.exec
		switch {
		case f.state == filePresent && err != nil:
			return deviate(unready("§9.2a"), "a command that prints a file answered an error, not its result", "%s (%s): %v", st, f.path, err)
		case f.state == filePresent && res.ExitCode != 0:
			return deviate(rules("§9.2a"), "a command that prints a file did not exit 0", "%s: exit %d, stderr %q", st, res.ExitCode, res.Stderr)
		case f.state == filePresent && !bytes.Equal(bytes.TrimRight(res.Stdout, "\r\n"), bytes.TrimRight(f.data, "\r\n")):
			return deviate(rules("§9.2a"), "a command's stdout is not what it printed", "%s: printed %d bytes, want the file's %d", st, len(res.Stdout), len(f.data))
		case f.state != filePresent && err != nil && hypervisor.CodeOf(err) == hypervisor.CodeFailed:
			return deviate(unready("§9.2b"), "a command that fails answered an error, not its result", "%s of a file that is not there: %v", st, err)
		case f.state == fileErased && err == nil && res.ExitCode == 0 && f.data != nil && bytes.Equal(bytes.TrimRight(res.Stdout, "\r\n"), bytes.TrimRight(f.data, "\r\n")):
			return deviate(rules("§7.3"), "a file written into the guest before a restore is still there after it", "%s (%s)", st, f.path)
		case f.state == fileErased && f.data == nil && err == nil && res.ExitCode == 0:
			return deviate(rules("§9.2b"), "a command that fails exited 0", "%s of a file never written: stdout %q", st, res.Stdout)
		case f.state == fileErased && f.data == nil && err == nil && len(bytes.TrimSpace(res.Stderr)) == 0:
			return deviate(rules("§9.2b"), "a command that fails left stderr empty", "%s of a file never written: exit %d", st, res.ExitCode)
		}
	case stepSleep:
		switch {
		case err == nil:
			return deviate(rules("§9.2c"), "a command still running at its timeout was not cut", "%s answered after %s: exit %d", st, r.took.Round(time.Millisecond), r.exec.ExitCode)
		case !isCode(err, hypervisor.CodeTimeout) && !r.short:
			return deviate(rules("§9.2c"), "a command cut at its timeout did not answer timeout", "%s: %v", st, err)
		case r.took > st.Timeout+q.x.timing.Margin:
			return deviate(rules("§9.2c"), "a command cut at its timeout answered late", "%s answered after %s", st, r.took.Round(time.Millisecond))
		}
	case stepFlood:
		// The command writes FloodSize bytes at least; asked for fewer,
		// the driver keeps their beginning and says it dropped the rest.
		res := r.exec
		switch {
		case err != nil:
			return deviate(unready("§9.5"), "a command that floods its output answered an error, not its output cut to max_output", "%s: %v", st, err)
		case res.ExitCode != 0:
			return deviate(rules("§9.5"), "a command that floods its output did not exit 0", "%s: exit %d, stderr %.200q", st, res.ExitCode, res.Stderr)
		case len(res.Stdout) > st.Max:
			return deviate(rules("§9.5"), "a command's output came back longer than the request's max_output", "%s: %d bytes of stdout", st, len(res.Stdout))
		case len(res.Stdout) == 0:
			return deviate(rules("§9.2a", "§9.5"), "a command that floods its output came back with no stdout", "%s", st)
		case !res.StdoutTruncated:
			return deviate(rules("§9.5"), "a command's output was cut without saying so (StdoutTruncated)", "%s: %d bytes of stdout of the %d written", st, len(res.Stdout), FloodSize)
		}
	}
	return nil
}

// effects is what a step that answered does to the model.
func (q *sequence) effects(st Step, v *vmModel, b pre, r result, after hypervisor.Status) {
	if r.err != nil {
		if st.Op == stepCleanup && isCode(r.err, hypervisor.CodeNotFound) {
			// It may have stopped the VM before it found no snapshot.
			q.powered(v, after)
		}
		return
	}
	switch st.Op {
	case stepStart:
		on := after.Power == hypervisor.PowerStarting || after.Power == hypervisor.PowerRunning
		// Whether a start of a VM on its way off found it running (did
		// nothing, and the stop goes on) or found it off a moment later
		// and started it again, only the state-change time tells; a
		// driver that gives none leaves the model unable to hold the
		// stop's promise.
		untold := on && (b.st.StateChanged.IsZero() || after.StateChanged.IsZero()) &&
			(b.mayOff || v.acpi || !v.stopDue.IsZero())
		if b.off || untold || (on && after.StateChanged.After(b.st.StateChanged)) {
			// A start that started it: whatever the VM was on its way to
			// before, it runs now. (One that found it running did nothing,
			// and a stop under way goes on.)
			v.stopDue, v.unlockDue, v.acpi = time.Time{}, time.Time{}, false
		}
		if b.running && after.Power.IsOff() {
			q.powered(v, after) // it went off by itself meanwhile
		}
		if b.off || b.mayOff {
			v.cleanAt, v.stopped, v.sticky = "", false, false
			for _, f := range v.files {
				if f.state == filePresent {
					f.state = fileMaybe
				}
			}
		}
	case stepStop:
		switch {
		case b.off && st.Method == hypervisor.StopEmergency && !b.unlocked:
			v.unlockDue = r.at.Add(q.x.timing.Settle)
			v.sticky = false
		case !b.off && st.Method == hypervisor.StopACPI:
			v.acpi = true
			v.stopped = true
		case !b.off && v.stopDue.IsZero():
			v.stopDue = r.at.Add(q.x.timing.Settle)
			v.stopped = true
		}
	case stepUnlock:
		v.sticky = false
	case stepRestore:
		v.stopDue, v.acpi = time.Time{}, false
		q.restored(v, st.Snapshot, after)
	case stepCleanup:
		v.stopDue, v.unlockDue, v.acpi, v.sticky = time.Time{}, time.Time{}, false, false
		if st.Restore {
			q.restored(v, st.Snapshot, after)
		} else {
			q.powered(v, after)
		}
	case stepCopyIn:
		if after.Power == hypervisor.PowerRunning {
			f := q.file(v, st.File)
			f.data, f.state = r.out, filePresent
			v.cleanAt = ""
		}
	}
}

// restored is what a successful restore does to the model.
func (q *sequence) restored(v *vmModel, snapshot string, after hypervisor.Status) {
	want, known := q.target(v, snapshot)
	if known {
		v.snapshot, v.snapKnown, v.cleanAt = want, true, want
	}
	for _, f := range v.files {
		f.state = fileErased
	}
	v.stopped, v.sticky = false, false
	_ = after
}

// powered notes that the VM's process may have ended: the files written
// since it started may be gone.
func (q *sequence) powered(v *vmModel, after hypervisor.Status) {
	if after.Power.IsOff() {
		for _, f := range v.files {
			if f.state == filePresent {
				f.state = fileMaybe
			}
		}
	}
}

// together takes a step of two operations at once: twice on one VM, once
// on each of two VMs, or one while a read of its VM runs.
func (q *sequence) together(st Step) {
	first, second := st, *st.With
	first.With = nil
	read := ""
	if first.Op == stepStatus || first.Op == stepList {
		read = first.Op
	}
	vms := []*vmModel{q.vms[second.VM]}
	if read == "" && second.VM != first.VM {
		vms = append([]*vmModel{q.vms[first.VM]}, vms...)
	}
	befores := map[string]pre{}
	for _, v := range vms {
		q.quietly(v)
		if st.Wait {
			q.settle(v, q.x.timing.Settle)
		}
		before, ok := q.observe(v, spontaneous)
		if !ok || q.over() {
			return
		}
		befores[v.name] = q.pre(v, before)
	}
	var (
		wg       sync.WaitGroup
		r1, r2   result
		readErr  error
		listed   []hypervisor.VM
		readBack hypervisor.Status
	)
	wg.Add(2)
	begun := time.Now()
	go func() {
		defer wg.Done()
		if read == "" {
			r1 = q.call(first, q.vms[first.VM])
			return
		}
		ctx, cancel := context.WithTimeout(q.ctx, q.x.timing.Settle)
		defer cancel()
		q.x.calls.Add(1)
		q.ops.Add(1)
		if read == stepStatus {
			readBack, readErr = q.x.s.d.Status(ctx, first.VM)
		} else {
			listed, readErr = q.x.s.d.ListVMs(ctx)
		}
	}()
	go func() {
		defer wg.Done()
		if len(vms) == 1 {
			pause(q.ctx, togetherStagger) // the second arrives while the first is under way
		}
		r2 = q.call(second, q.vms[second.VM])
	}()
	wg.Wait()
	both := time.Since(begun)
	switch read {
	case stepStatus:
		if readErr != nil {
			q.fail(fmt.Errorf("status of %q while %s ran: %w", first.VM, second, readErr))
			return
		}
		q.found(q.validStatus(vms[0], readBack))
	case stepList:
		if q.x.caps.Has(hypervisor.CapList) {
			q.found(q.listing(listed, readErr))
		}
	}
	type issued struct {
		st Step
		r  result
	}
	var ops []issued
	if read == "" {
		ops = append(ops, issued{first, r1})
	}
	ops = append(ops, issued{second, r2})
	m := mode{read: read, twice: len(vms) == 1 && read == ""}
	lenient := map[string]bool{}
	for _, v := range vms {
		lenient[v.name], v.unsettled = v.unsettled, false
	}
	for _, o := range ops {
		v := q.vms[o.st.VM]
		q.found(q.timely(o.st, v, o.r))
		if o.r.cutShort() {
			continue
		}
		om := m
		om.lenient = lenient[v.name]
		q.found(q.answer(opName(o.st.Op), o.st.VM, o.r.err, om, q.allowed(o.st, v, befores[v.name]), befores[v.name]))
		q.found(detail(opName(o.st.Op), o.st.VM, o.r.err))
	}
	if q.over() {
		return
	}
	if m.twice || read != "" {
		// One VM: hold what each answer did, not what the status right
		// after says of either.
		v := vms[0]
		after, ok := q.read(v.name)
		if !ok {
			return
		}
		cut := false
		for _, o := range ops {
			if !o.r.cutShort() {
				q.effects(o.st, v, befores[v.name], o.r, after)
			}
			cut = cut || o.r.cutShort()
		}
		q.see(v, after, resync)
		if cut {
			q.aftermath(v, second)
		}
		return
	}
	// Two VMs: each answer is held as if alone, and two restores must
	// overlap (§13.1a).
	for _, o := range ops {
		v := q.vms[o.st.VM]
		after, ok := q.read(v.name)
		if !ok {
			return
		}
		if !o.r.cutShort() {
			if !lenient[v.name] {
				q.found(q.post(o.st, v, befores[v.name], o.r, after))
			}
			q.effects(o.st, v, befores[v.name], o.r, after)
		}
		q.see(v, after, resync)
		if o.r.cutShort() {
			q.aftermath(v, o.st)
		}
	}
	if first.Op == stepRestore && second.Op == stepRestore && r1.err == nil && r2.err == nil && !q.over() {
		q.found(q.x.overlap(q, first, second, both))
		for _, v := range vms {
			q.observe(v, resync) // the restores timed again changed the state-change times
		}
	}
}

// togetherStagger is how long after the first operation of a step the
// second is issued on the same VM: long enough for the first to be under
// way, short enough to arrive during it.
const togetherStagger = 10 * time.Millisecond

// settle waits, at most bound, until the VM has no transition under way
// (starting, stopping, restoring, a lingering lock), reading its status
// through the observation chain; a stop whose effect the contract
// promises by then that has not come is a deviation (§5.1b, §5.2b).
func (q *sequence) settle(v *vmModel, bound time.Duration) {
	deadline := time.Now().Add(bound)
	delay := 2 * time.Millisecond
	for !q.over() {
		st, ok := q.observe(v, spontaneous)
		if !ok || q.over() {
			return
		}
		lingering := st.Power.IsOff() && st.Lock == hypervisor.LockLocked && !v.sticky
		if isSettled(st) && st.Power != hypervisor.PowerStopping && !lingering && v.stopDue.IsZero() && v.unlockDue.IsZero() {
			return
		}
		now := time.Now()
		if d := q.due(v, st, now); d != nil {
			q.found(d)
			return
		}
		if now.After(deadline) {
			q.logf("VM %s did not settle within %s: %s", v.name, bound, describe(st))
			return
		}
		pause(q.ctx, delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// due is the deviation of a promise whose time has passed: a VM not off
// after a stop was accepted (§5.1b), a session still held after an
// emergency stop claimed to release it (§5.2b).
func (q *sequence) due(v *vmModel, st hypervisor.Status, now time.Time) *Deviation {
	switch {
	case !v.stopDue.IsZero() && now.After(v.stopDue) && !st.Power.IsOff():
		return deviate(rules("§5.1b"), "a power-off or an emergency stop was accepted, yet the VM did not get off-like",
			"%s later the VM is %s", q.x.timing.Settle, describeStatus(st))
	case !v.unlockDue.IsZero() && now.After(v.unlockDue) && st.Lock == hypervisor.LockLocked:
		return deviate(rules("§5.2b"), "an emergency stop of an off VM whose session was held succeeded, yet the session is still held",
			"%s later the VM is %s", q.x.timing.Settle, describeStatus(st))
	}
	return nil
}

// guestReady waits, at most Settle, until the running guest of v takes
// guest operations, probing with a declared one: a guest not ready
// answers invalid state (§9.4).
func (q *sequence) guestReady(v *vmModel) {
	probe := Step{VM: v.name, File: readyFile}
	switch {
	case q.x.caps.Has(hypervisor.CapGuestExec):
		probe.Op = stepCat
	case q.x.caps.Has(hypervisor.CapGuestCopyIn):
		probe.Op, probe.Size = stepCopyIn, 16
	default:
		return
	}
	deadline := time.Now().Add(q.x.timing.Settle)
	delay := 5 * time.Millisecond
	for !q.over() {
		r := q.call(probe, v)
		q.ops.Add(-1) // the probe is part of the step that waits, not an operation of its own
		if !isCode(r.err, hypervisor.CodeInvalidState) || time.Now().After(deadline) {
			return
		}
		// A VM that stopped meanwhile (the power button, pressed before,
		// obeyed) will not get a guest ready: the step goes on, as the
		// core's would.
		if st, ok := q.observe(v, spontaneous); !ok || (st.Power != hypervisor.PowerRunning && st.Power != hypervisor.PowerStarting) {
			return
		}
		pause(q.ctx, delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// readyFile is the guest file the readiness probe reads or writes; the
// model's steps never name it.
const readyFile = 1 << 20

// watching is a watch the sequence opened.
type watching struct {
	cancel context.CancelFunc
	ch     <-chan hypervisor.Status
	direct bool // on the driver in process, not through the wire
	mu     sync.Mutex
	got    []hypervisor.Status // delivered
	done   chan struct{}
}

// latest is the last status the watch delivered.
func (w *watching) latest() hypervisor.Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got[len(w.got)-1]
}

// watch opens a watch of the VM, which must first deliver its current
// status (§10.1a); it collects what it delivers until unwatch.
func (q *sequence) watch(vm string) {
	v := q.vms[vm]
	if q.watches[vm] != nil {
		return
	}
	before, ok := q.observe(v, spontaneous)
	if !ok || q.over() {
		return
	}
	d, direct := q.x.s.d, false
	if served := q.x.s.served(); served != nil {
		// The driver's own channel, which the wire would close for it.
		d, direct = served, true
	}
	ctx, cancel := context.WithCancel(q.ctx)
	q.ops.Add(1)
	q.x.calls.Add(1)
	ch, err := d.Watch(ctx, vm)
	if err != nil {
		cancel()
		if hypervisor.IsUnsupported(err) {
			q.found(deviate(rules("§1.2b"), "Watch answered unsupported, though watch is declared", "%v", err))
			return
		}
		q.found(deviate(rules("§10.1a"), "a watch of a VM of the target did not start", "Watch(%q): %v", vm, err))
		return
	}
	first, got, closed := next(ch, q.x.timing.Settle)
	if !got {
		cancel()
		what := "nothing"
		if closed {
			what = "a closed channel"
		}
		q.found(deviate(rules("§10.1a"), "a watch did not first deliver the VM's status", "Watch(%q) delivered %s within %s", vm, what, q.x.timing.Settle))
		return
	}
	after, ok := q.observe(v, spontaneous)
	if !ok {
		cancel()
		return
	}
	if !sameStatus(first, before) && !sameStatus(first, after) {
		cancel()
		q.found(deviate(rules("§10.1a"), "a watch first delivered another status than the VM's current one",
			"Watch(%q) first delivered %s; Status said %s, then %s", vm, describe(first), describe(before), describe(after)))
		return
	}
	w := &watching{cancel: cancel, ch: ch, direct: direct, got: []hypervisor.Status{first}, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for st := range ch {
			w.mu.Lock()
			w.got = append(w.got, st)
			w.mu.Unlock()
		}
	}()
	q.watches[vm] = w
}

// sameStatus reports whether two statuses are the same to a watch: a
// change of any of power, lock and current snapshot is a change it
// delivers (§10.1b).
func sameStatus(a, b hypervisor.Status) bool {
	return a.Power == b.Power && a.Lock == b.Lock && a.CurrentSnapshot == b.CurrentSnapshot
}

// unwatch ends a watch: by then it must have followed the VM to where
// Status says it is, one status per change (§10.1b), and once its context
// ended the driver must close its channel (§10.1c). A driver may let a
// change that lasted an instant pass unseen (its own reader was late), so
// the model holds it to a state the VM stays in, not to each one Status
// happened to show on the way.
func (q *sequence) unwatch(vm string) {
	w := q.watches[vm]
	if w == nil {
		return
	}
	delete(q.watches, vm)
	q.ops.Add(1)
	defer w.cancel()
	v := q.vms[vm]
	now, ok := q.observe(v, spontaneous)
	for round := 0; ok && !q.over(); round++ {
		deadline := time.Now().Add(q.x.timing.Margin)
		for !sameStatus(w.latest(), now) && time.Now().Before(deadline) {
			pause(q.ctx, 5*time.Millisecond)
		}
		// What the watch delivered last, before the read that tells
		// whether the VM stayed where it was: a watch ahead of the first
		// read is a VM that moved on, which that read then shows.
		seen := w.latest()
		var again hypervisor.Status
		if again, ok = q.observe(v, spontaneous); !ok || q.over() {
			return
		}
		if !sameStatus(again, now) {
			// The VM moved on meanwhile: follow it again, a few times.
			if round < 3 {
				now = again
				continue
			}
			q.logf("the watch of %s was not judged: the VM kept changing (%s)", vm, describe(again))
			break
		}
		if !sameStatus(seen, now) {
			w.mu.Lock()
			var got []string
			for _, st := range w.got {
				got = append(got, describe(st))
			}
			w.mu.Unlock()
			q.found(deviate(rules("§10.1b"), "a watch did not follow the VM to the state Status says it is in",
				"Status said %s, and again after %s of waiting for the watch, which delivered %v", describe(again), q.x.timing.Margin, got))
			return
		}
		break
	}
	if !ok || q.over() {
		return
	}
	w.cancel()
	closed := true
	select {
	case <-w.done:
	case <-time.After(q.x.timing.Margin):
		closed = false
	}
	switch {
	case w.direct && !closed:
		q.found(deviate(rules("§10.1c"), "the driver did not close its watch channel when the watch's context ended",
			"the channel is still open %s after", q.x.timing.Margin))
	case !w.direct:
		q.unwatched = time.Now()
	}
}

// finish ends the sequence: every watch ends, and the model waits for
// what the contract promises by a time: stops to take effect, a VM
// cut-short operation left alone to stay as it is, the driver's own late
// answers to show in the SDK's record.
func (q *sequence) finish() {
	for _, vm := range slices.Sorted(maps.Keys(q.watches)) {
		q.unwatch(vm)
	}
	for _, vm := range q.x.order {
		v := q.vms[vm]
		if v == nil || q.over() {
			continue
		}
		if !v.stopDue.IsZero() || !v.unlockDue.IsZero() {
			due := v.stopDue
			if v.unlockDue.After(due) {
				due = v.unlockDue
			}
			q.settle(v, time.Until(due)+q.x.timing.Margin)
		}
		q.quietly(v)
	}
	diag := q.x.s.diagnostics()
	if diag == nil || q.over() {
		return
	}
	if len(q.shortCalls) > 0 {
		// Judged once the driver answered every call cut short, or a
		// margin after the last was cut, whichever comes first.
		end := q.shortEnd.Add(q.x.timing.Margin)
		var now sdk.Diagnostics
		for delay := 5 * time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
			if _, ok := q.read(q.x.s.target.VM); !ok {
				return
			}
			now = diag()
			if answered(now, q.shortTags) || !time.Now().Before(end) || q.over() {
				break
			}
			pause(q.ctx, min(delay, time.Until(end)))
		}
		for _, call := range slices.Sorted(maps.Keys(q.shortCalls)) {
			if late := now.LateSum[call] - q.diagAt.LateSum[call]; late > q.x.timing.Margin {
				q.found(deviate(rules("§12.1a"), "the driver itself answered a call long after its deadline, or is still at it",
					"%s: %s past its deadline; the caller had its timeout long before", call, late.Round(time.Millisecond)))
				return
			}
		}
	}
	if !q.unwatched.IsZero() {
		pause(q.ctx, time.Until(q.unwatched.Add(sdk.WatchCloseGrace+q.x.timing.Margin)))
		if _, ok := q.read(q.x.s.target.VM); !ok {
			return
		}
		if n := diag().UnclosedWatches - q.diagAt.UnclosedWatches; n > 0 {
			q.found(deviate(rules("§10.1c"), "the driver did not close its watch channel when the watch's context ended",
				"the SDK counted %d channel(s) left open", n))
		}
	}
}
