package conformance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// session is one run of the suite against one driver.
type session struct {
	target Target
	timing Timing
	guest  Guest
	info   hypervisor.Info
	caps   hypervisor.Capabilities
	d      hypervisor.Driver // the driver, through tracked
	raw    hypervisor.Driver // the driver as Connect gave it
	ctx    context.Context
	close  func()

	// tags is the prefix of this run's call tags, so that two runs against
	// one plugin tell theirs apart; tagged counts the calls tagged.
	tags   string
	tagged atomic.Int64

	mu  sync.Mutex
	vms map[string]*vmRecord
	// fullRestore is how long a whole restore of a VM took, measured once.
	fullRestore map[string]time.Duration
}

// vmRecord is what the suite remembers of a VM it may change, to bring it
// back to a baseline before each check and to how it found it at the end.
type vmRecord struct {
	name     string
	initial  hypervisor.Status
	snapshot string // the baseline snapshot; empty when there is none
	touched  bool   // an operation that may change it was called
	ran      bool   // it was started or its guest used: its disk changed
}

// tag is a new tag for a call (sdk.TagCall).
func (s *session) tag() string {
	return fmt.Sprintf("%s-%d", s.tags, s.tagged.Add(1))
}

// open connects to the driver and records the state of every VM the
// target names, so that the run can put them back.
func open(ctx context.Context, target Target) (*session, error) {
	if target.Connect == nil {
		return nil, errors.New("conformance: Target.Connect is nil: use Plugin, InProcess or Connected")
	}
	if target.VM == "" {
		return nil, errors.New("conformance: Target.VM is empty: name a disposable VM the suite may start, stop and restore")
	}
	names := map[string]string{}
	for _, f := range []struct{ field, vm string }{
		{"VM", target.VM}, {"PeerVM", target.PeerVM}, {"LockVM", target.LockVM},
		{"DeadlineVM", target.DeadlineVM}, {"UnmappedVM", target.UnmappedVM},
	} {
		if f.vm == "" {
			continue
		}
		if other, dup := names[f.vm]; dup {
			return nil, fmt.Errorf("conformance: Target.%s and Target.%s are both %q: each needs a VM of its own", other, f.field, f.vm)
		}
		names[f.vm] = f.field
	}
	drv, closeFn, err := target.Connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("conformance: connect to the driver: %w", err)
	}
	s := &session{
		target: target,
		timing: target.Timing.withDefaults(),
		guest:  target.Guest.withDefaults(),
		ctx:    ctx,
		close:  closeFn,
		tags:   "conformance-" + token(),
		vms:    map[string]*vmRecord{},

		fullRestore: map[string]time.Duration{},
	}
	s.d = &tracked{Driver: drv, s: s}
	s.raw = drv
	fail := func(err error) (*session, error) {
		closeFn()
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, s.timing.Settle)
	defer cancel()
	if s.info, err = drv.Info(octx); err != nil {
		return fail(fmt.Errorf("conformance: Info: %w", err))
	}
	s.caps = s.info.Capabilities
	for _, vm := range []string{target.VM, target.PeerVM, target.LockVM, target.DeadlineVM} {
		if vm == "" {
			continue
		}
		st, err := drv.Status(octx, vm)
		if err != nil {
			return fail(fmt.Errorf("conformance: cannot use VM %q (Target.%s): %w", vm, names[vm], err))
		}
		rec := &vmRecord{name: vm, initial: st, snapshot: st.CurrentSnapshot}
		if vm == target.VM && target.Snapshot != "" {
			rec.snapshot = target.Snapshot
		}
		s.vms[vm] = rec
	}
	if target.OtherSnapshot != "" && target.OtherSnapshot == s.vms[target.VM].snapshot {
		return fail(fmt.Errorf("conformance: Target.OtherSnapshot is %q, the snapshot the checks restore VM %q to: name a different one",
			target.OtherSnapshot, target.VM))
	}
	return s, nil
}

// interruptedPutBack bounds putting the VMs back after the caller ended
// the run.
const interruptedPutBack = 10 * time.Second

// served is the driver itself when the suite reaches it in process
// (InProcess), without the wire between; nil otherwise.
func (s *session) served() hypervisor.Driver {
	if d, ok := s.raw.(interface{ Served() hypervisor.Driver }); ok {
		return d.Served()
	}
	return nil
}

// diagnostics reads what the SDK in the plugin reported about its driver
// (sdk.Diagnostics), or is nil when the driver is not reached through the
// SDK.
func (s *session) diagnostics() func() sdk.Diagnostics {
	if d, ok := s.raw.(interface{ Diagnostics() sdk.Diagnostics }); ok {
		return d.Diagnostics
	}
	return nil
}

// driverTook is the driver's own time for the call tagged tag, known
// (ok) when the SDK reports it and the driver answered.
func (s *session) driverTook(tag string) (time.Duration, bool) {
	diag := s.diagnostics()
	if diag == nil || tag == "" {
		return 0, false
	}
	c, ok := diag().Tagged[tag]
	return c.Took, ok && c.Answered
}

// wrongCodeAtDeadline reports whether err, which reached the caller took
// after a call under deadline began, breaks §12.1a: an error other than
// timeout given at the deadline. The checks and the model judge it here
// alike. An error the driver gave within the deadline by its own time
// (tag's, when the SDK reports it) is its answer, which a busy machine may
// deliver late: beside stress-ng, an Unlock refused at once reached the
// caller after its 200 ms. Without the driver's time, only an answer half
// the margin late counts, for the same reason.
func (s *session) wrongCodeAtDeadline(err error, took, deadline time.Duration, tag string) bool {
	if err == nil || hypervisor.CodeOf(err) == hypervisor.CodeTimeout {
		return false
	}
	if own, ok := s.driverTook(tag); ok {
		return own >= deadline
	}
	return took >= deadline+s.timing.Margin/2
}

// finish returns every VM the run touched to the power state and snapshot
// it was found in, then closes the connection. It reports what it could
// not put back.
func (s *session) finish() error {
	defer s.close()
	bound := 4 * s.timing.Settle
	if s.ctx.Err() != nil {
		// The caller gave up (Ctrl-C, SIGTERM): put back what can be put
		// back quickly, and do not keep it waiting for a VM that will not
		// settle.
		bound = min(bound, interruptedPutBack)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), bound)
	defer cancel()
	var errs []error
	for _, vm := range []string{s.target.VM, s.target.PeerVM, s.target.LockVM, s.target.DeadlineVM} {
		rec := s.record(vm)
		if rec == nil || !rec.touched {
			continue
		}
		if err := s.putBack(ctx, rec); err != nil {
			errs = append(errs, fmt.Errorf("VM %q: %w", vm, err))
		}
	}
	return errors.Join(errs...)
}

// putBack restores rec's VM to its initial snapshot and, if it was found
// with a process, starts it again. The guest's own state (what ran inside
// it) is not the suite's to recreate.
func (s *session) putBack(ctx context.Context, rec *vmRecord) error {
	snap := rec.initial.CurrentSnapshot
	st, err := s.d.Status(ctx, rec.name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	restore := rec.ran || st.CurrentSnapshot != snap
	s.mu.Unlock()
	if !st.Power.IsOff() || st.Lock == hypervisor.LockLocked || restore {
		if err := s.clean(ctx, rec.name, snap, restore); err != nil {
			return err
		}
	}
	switch rec.initial.Power {
	case hypervisor.PowerRunning, hypervisor.PowerStarting, hypervisor.PowerPaused, hypervisor.PowerStuck:
		if err := s.retryLocked(ctx, func() error { return s.d.Start(ctx, rec.name) }); err != nil {
			return fmt.Errorf("start it again (it was %s): %w", rec.initial.Power, err)
		}
		if _, err := s.waitFor(ctx, rec.name, s.timing.Settle, "running", isRunning); err != nil {
			return err
		}
	}
	s.mu.Lock()
	rec.touched, rec.ran = false, false
	s.mu.Unlock()
	return nil
}

func (s *session) record(vm string) *vmRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vms[vm]
}

// mark notes that an operation that may change vm is about to run.
func (s *session) mark(vm string, ran bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec := s.vms[vm]; rec != nil {
		rec.touched = true
		rec.ran = rec.ran || ran
	}
}

// baseline brings a VM to where every check starts from: off-like,
// unlocked, at its baseline snapshot, its disk as the snapshot left it.
func (s *session) baseline(ctx context.Context, vm string) error {
	rec := s.record(vm)
	if rec == nil {
		return nil
	}
	st, err := s.d.Status(ctx, vm)
	if err != nil {
		return err
	}
	s.mu.Lock()
	restore := rec.ran || (rec.snapshot != "" && st.CurrentSnapshot != rec.snapshot)
	s.mu.Unlock()
	if !st.Power.IsOff() || st.Lock == hypervisor.LockLocked || restore {
		if err := s.clean(ctx, vm, rec.snapshot, restore); err != nil {
			return err
		}
	}
	s.mu.Lock()
	rec.touched, rec.ran = false, false
	s.mu.Unlock()
	return nil
}

// clean makes the VM off-like and unlocked and, with restore, restores
// snapshot (when the driver can). It tries the driver's own cleanup first
// and, if that does not leave the VM clean, composes one from stop, unlock
// and restore, so that a broken operation under test does not keep the
// suite from cleaning up.
func (s *session) clean(ctx context.Context, vm, snapshot string, restore bool) error {
	restore = restore && snapshot != "" && s.caps.Has(hypervisor.CapRestore)
	s.kill(ctx, vm)
	if s.caps.Has(hypervisor.CapCleanup) {
		err := s.retryLocked(ctx, func() error {
			_, err := s.d.Cleanup(ctx, vm, hypervisor.CleanupRequest{Restore: restore, Snapshot: snapshot})
			return err
		})
		if err == nil && s.verifyClean(ctx, vm, snapshot, restore) == nil {
			return nil
		}
	}
	if _, err := s.waitFor(ctx, vm, s.timing.Settle, "a settled state", isSettled); err != nil {
		return err
	}
	if err := s.stopToOff(ctx, vm); err != nil {
		return err
	}
	if err := s.unlock(ctx, vm); err != nil {
		return err
	}
	if restore {
		if err := s.retryLocked(ctx, func() error { return s.d.Restore(ctx, vm, snapshot) }); err != nil {
			return fmt.Errorf("restore %q: %w", snapshot, err)
		}
	}
	return s.verifyClean(ctx, vm, snapshot, restore)
}

// kill stops a VM that has a process by the quickest means, an emergency
// stop, when the driver declares one: the VM is disposable and about to be
// restored, so its guest loses nothing the suite needs. It reports whether
// the VM is off-like a margin later; one that is not is left to the
// caller's other means.
func (s *session) kill(ctx context.Context, vm string) bool {
	if !s.caps.Has(hypervisor.CapStopEmergency) {
		return false
	}
	st, err := s.d.Status(ctx, vm)
	if err != nil || st.Power.IsOff() || !isSettled(st) || st.Power == hypervisor.PowerUnknown {
		return err == nil && st.Power.IsOff()
	}
	if s.retryLocked(ctx, func() error { return s.d.Stop(ctx, vm, hypervisor.StopEmergency) }) != nil {
		return false
	}
	_, err = s.waitFor(ctx, vm, s.timing.Margin, "off", isOff)
	return err == nil
}

func (s *session) verifyClean(ctx context.Context, vm, snapshot string, restore bool) error {
	st, err := s.d.Status(ctx, vm)
	switch {
	case err != nil:
		return err
	case !st.Power.IsOff():
		return fmt.Errorf("still %s after cleaning", st.Power)
	case st.Lock == hypervisor.LockLocked:
		return errors.New("still locked after cleaning")
	case restore && st.CurrentSnapshot != snapshot:
		return fmt.Errorf("at snapshot %q after restoring %q", st.CurrentSnapshot, snapshot)
	}
	return nil
}

// stopMethods lists the declared stop methods, gentlest first.
func (s *session) stopMethods() []hypervisor.StopMethod {
	var out []hypervisor.StopMethod
	for _, m := range hypervisor.StopMethods {
		if s.caps.Has(m.Capability()) {
			out = append(out, m)
		}
	}
	return out
}

// forcefulStop is the declared method that ends a VM whatever its guest
// does: power-off, else an emergency stop; empty if neither is declared.
func (s *session) forcefulStop() hypervisor.StopMethod {
	for _, m := range []hypervisor.StopMethod{hypervisor.StopPowerOff, hypervisor.StopEmergency} {
		if s.caps.Has(m.Capability()) {
			return m
		}
	}
	return ""
}

// stopToOff stops the VM with the most forceful methods first, each given
// Settle to take effect. A refusal is not final: the VM may have got off
// by itself meanwhile, which the wait then sees.
func (s *session) stopToOff(ctx context.Context, vm string) error {
	st, err := s.d.Status(ctx, vm)
	if err != nil {
		return err
	}
	if st.Power.IsOff() {
		return nil
	}
	methods := []hypervisor.StopMethod{hypervisor.StopPowerOff, hypervisor.StopEmergency, hypervisor.StopACPI}
	var tried []string
	for _, m := range methods {
		if !s.caps.Has(m.Capability()) {
			continue
		}
		tried = append(tried, string(m))
		_ = s.retryLocked(ctx, func() error { return s.d.Stop(ctx, vm, m) })
		bound := s.timing.Settle
		if m == hypervisor.StopACPI {
			bound = s.timing.ACPI
		}
		if st, err = s.waitFor(ctx, vm, bound, "off", isOff); err == nil {
			return nil
		}
	}
	if len(tried) == 0 {
		return fmt.Errorf("the VM is %s and the driver declares no stop method", st.Power)
	}
	return fmt.Errorf("the VM is not off after %s: %w", strings.Join(tried, ", "), err)
}

// unlock leaves the VM unlocked as far as the driver can tell: Unlock if
// declared, and with status.lock a wait for the lock to go.
func (s *session) unlock(ctx context.Context, vm string) error {
	if s.caps.Has(hypervisor.CapUnlock) {
		_ = s.retryLocked(ctx, func() error { return s.d.Unlock(ctx, vm) })
	}
	if s.caps.Has(hypervisor.CapLockState) {
		if _, err := s.waitFor(ctx, vm, s.timing.Settle, "unlocked", isUnlocked); err != nil {
			return err
		}
	}
	return nil
}

// waitFor polls the VM's status until cond holds, for at most bound. It is
// the suite's only way of waiting for a state: Watch is under test itself.
func (s *session) waitFor(ctx context.Context, vm string, bound time.Duration, what string, cond func(hypervisor.Status) bool) (hypervisor.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	delay := time.Millisecond
	var st hypervisor.Status
	var last error
	for {
		var err error
		st, err = s.d.Status(ctx, vm)
		switch {
		case err == nil && cond(st):
			return st, nil
		case err == nil:
			last = nil
		case hypervisor.IsNotFound(err) || hypervisor.IsUnsupported(err):
			return st, err
		default:
			last = err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			if last != nil {
				return st, fmt.Errorf("VM %q did not reach %s within %s; last status error: %w", vm, what, bound, last)
			}
			return st, fmt.Errorf("VM %q did not reach %s within %s; it is %s", vm, what, bound, describe(st))
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// retryLocked calls f until it answers something other than locked, the
// code the contract makes transient (§11.1), for at most Settle.
func (s *session) retryLocked(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, s.timing.Settle)
	defer cancel()
	delay := 5 * time.Millisecond
	for {
		err := f()
		if err == nil || !hypervisor.IsLocked(err) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

func isOff(st hypervisor.Status) bool     { return st.Power.IsOff() }
func isRunning(st hypervisor.Status) bool { return st.Power == hypervisor.PowerRunning }
func isUnlocked(st hypervisor.Status) bool {
	return st.Lock != hypervisor.LockLocked
}

// isSettled: no transition under way that a stop would be refused for.
func isSettled(st hypervisor.Status) bool {
	switch st.Power {
	case hypervisor.PowerStarting, hypervisor.PowerRestoring, hypervisor.PowerSaving, hypervisor.PowerSnapshotting:
		return false
	}
	return true
}

// describe is a status in a few words, for messages.
func describe(st hypervisor.Status) string {
	s := fmt.Sprintf("%s (raw %q), lock %s", st.Power, st.Raw, st.Lock)
	if st.CurrentSnapshot != "" {
		s += fmt.Sprintf(", at snapshot %q", st.CurrentSnapshot)
	}
	return s
}

// tracked notes which VMs the checks may have changed, so that the suite
// cleans only those.
type tracked struct {
	hypervisor.Driver
	s *session
}

func (t *tracked) Start(ctx context.Context, vm string) error {
	t.s.mark(vm, true)
	return t.Driver.Start(ctx, vm)
}

func (t *tracked) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	t.s.mark(vm, false)
	return t.Driver.Stop(ctx, vm, m)
}

func (t *tracked) Unlock(ctx context.Context, vm string) error {
	t.s.mark(vm, false)
	return t.Driver.Unlock(ctx, vm)
}

func (t *tracked) Restore(ctx context.Context, vm, snapshot string) error {
	t.s.mark(vm, false)
	return t.Driver.Restore(ctx, vm, snapshot)
}

func (t *tracked) Cleanup(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	t.s.mark(vm, false)
	return t.Driver.Cleanup(ctx, vm, req)
}

func (t *tracked) CopyIn(ctx context.Context, vm, hostPath, guestPath string) error {
	t.s.mark(vm, true)
	return t.Driver.CopyIn(ctx, vm, hostPath, guestPath)
}

func (t *tracked) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	t.s.mark(vm, true)
	return t.Driver.Exec(ctx, vm, req)
}

func (t *tracked) CopyOut(ctx context.Context, vm, guestPath, hostPath string) error {
	t.s.mark(vm, true)
	return t.Driver.CopyOut(ctx, vm, guestPath, hostPath)
}
