package fake_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/fake"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/conformance"
)

// Broken drivers: the reference fake behind a wrapper that breaks one rule
// of the contract the way a driver author might, the rest left correct.
// They are not the fake's violation modes: those were written together
// with the checks that catch them, and the suite is known to catch every
// one. These were written afterwards, against the contract alone, to
// measure what the named checks and the model each catch of mistakes
// nobody showed them (TestWhatTheModelCatchesThatTheChecksMiss).

// brokenDriver is one mistake: the rule it breaks, the area of the
// contract, and the wrapper that makes it.
type brokenDriver struct {
	name, rule, area string
	wrap             func(d hypervisor.Driver) hypervisor.Driver
}

// brokenFactory is the fake's factory with b's wrapper around its driver.
func brokenFactory(b brokenDriver) sdk.Factory {
	return func(cfg sdk.Config, log hclog.Logger) (hypervisor.Driver, error) {
		d, err := fake.New(cfg, log)
		if err != nil {
			return nil, err
		}
		return b.wrap(d), nil
	}
}

// brokenDrivers are the mistakes, by area.
var brokenDrivers = []brokenDriver{
	// Cleanup.
	{"cleanup-off-is-clean", "§8.1", "cleanup", func(d hypervisor.Driver) hypervisor.Driver {
		// An off, unlocked VM is taken as clean: no restore, whatever ran.
		return &cleanupOverride{d, func(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
			if st, err := d.Status(ctx, vm); err == nil && st.Power.IsOff() && st.Lock != hypervisor.LockLocked {
				return hypervisor.CleanupResult{}, nil
			}
			return d.Cleanup(ctx, vm, req)
		}}
	}},
	{"cleanup-current-snapshot", "§8.1", "cleanup", func(d hypervisor.Driver) hypervisor.Driver {
		// The snapshot asked for is dropped on the way: the current one.
		return &cleanupOverride{d, func(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
			req.Snapshot = ""
			return d.Cleanup(ctx, vm, req)
		}}
	}},
	{"cleanup-no-steps", "§8.1", "cleanup", func(d hypervisor.Driver) hypervisor.Driver {
		// The cleanup is done, but what it did is not reported.
		return &cleanupOverride{d, func(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
			_, err := d.Cleanup(ctx, vm, req)
			return hypervisor.CleanupResult{}, err
		}}
	}},
	{"cleanup-restore-error-dropped", "§8.1", "cleanup", func(d hypervisor.Driver) hypervisor.Driver {
		// A restore that fails for want of the snapshot is logged, not
		// answered: the cleanup succeeds with the VM off and unlocked.
		return &cleanupOverride{d, func(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
			res, err := d.Cleanup(ctx, vm, req)
			if hypervisor.IsNotFound(err) && req.Restore {
				if _, serr := d.Status(ctx, vm); serr == nil {
					res, err = d.Cleanup(ctx, vm, hypervisor.CleanupRequest{})
				}
			}
			return res, err
		}}
	}},

	// Guest copies and commands.
	{"copy-in-appends", "§9.1", "guest copies", func(d hypervisor.Driver) hypervisor.Driver {
		// The guest file is opened for appending: a copy over a file
		// already there adds to it.
		return &copyInOverride{d, func(ctx context.Context, vm, hostPath, guestPath string) error {
			tmp, err := os.MkdirTemp("", "broken-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			old := filepath.Join(tmp, "old")
			if d.CopyOut(ctx, vm, guestPath, old) != nil {
				return d.CopyIn(ctx, vm, hostPath, guestPath)
			}
			before, err1 := os.ReadFile(old)
			add, err2 := os.ReadFile(hostPath)
			if err := errors.Join(err1, err2); err != nil {
				return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, vm, "%v", err)
			}
			both := filepath.Join(tmp, "both")
			if err := os.WriteFile(both, append(before, add...), 0o600); err != nil {
				return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, vm, "%v", err)
			}
			return d.CopyIn(ctx, vm, both, guestPath)
		}}
	}},
	{"copy-out-cached", "§9.3", "guest copies", func(d hypervisor.Driver) hypervisor.Driver {
		// A guest file copied out once is kept and handed out again, as
		// if guest files never changed.
		var mu sync.Mutex
		cache := map[string][]byte{}
		return &copyOutOverride{d, func(ctx context.Context, vm, guestPath, hostPath string) error {
			mu.Lock()
			data, ok := cache[vm+"\x00"+guestPath]
			mu.Unlock()
			if ok {
				if st, err := d.Status(ctx, vm); err != nil || st.Power != hypervisor.PowerRunning {
					return d.CopyOut(ctx, vm, guestPath, hostPath)
				}
				return os.WriteFile(hostPath, data, 0o600)
			}
			if err := d.CopyOut(ctx, vm, guestPath, hostPath); err != nil {
				return err
			}
			if data, err := os.ReadFile(hostPath); err == nil {
				mu.Lock()
				cache[vm+"\x00"+guestPath] = data
				mu.Unlock()
			}
			return nil
		}}
	}},
	{"copy-out-drops-tail", "§9.3", "guest copies", func(d hypervisor.Driver) hypervisor.Driver {
		// A file over one 64 KiB chunk is read chunk by chunk, and the
		// last chunk, short, is lost.
		const chunk = 64 << 10
		return &copyOutOverride{d, func(ctx context.Context, vm, guestPath, hostPath string) error {
			if err := d.CopyOut(ctx, vm, guestPath, hostPath); err != nil {
				return err
			}
			data, err := os.ReadFile(hostPath)
			if err != nil || len(data) <= chunk {
				return err
			}
			return os.WriteFile(hostPath, data[:len(data)/chunk*chunk], 0o600)
		}}
	}},
	{"exec-merged-output", "§9.2a", "guest commands", func(d hypervisor.Driver) hypervisor.Driver {
		// stderr is sent to stdout, as a shell's 2>&1 would.
		return &execOverride{d, func(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
			res, err := d.Exec(ctx, vm, req)
			res.Stdout, res.Stderr = append(res.Stdout, res.Stderr...), nil
			return res, err
		}}
	}},
	{"exec-timeout-exit-code", "§9.2c", "guest commands", func(d hypervisor.Driver) hypervisor.Driver {
		// A command killed at its timeout is a result: the kill's exit
		// status, 137.
		return &execOverride{d, func(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
			res, err := d.Exec(ctx, vm, req)
			if hypervisor.CodeOf(err) == hypervisor.CodeTimeout && err != nil && ctx.Err() == nil {
				return hypervisor.ExecResult{ExitCode: 137}, nil
			}
			return res, err
		}}
	}},

	// Lock state.
	{"lock-unlocked-while-running", "§3.3b", "lock state", func(d hypervisor.Driver) hypervisor.Driver {
		// The session is only looked for on a VM that is off: a running
		// VM's is reported unlocked.
		fix := func(st hypervisor.Status) hypervisor.Status {
			if !st.Power.IsOff() && st.Power != hypervisor.PowerUnknown && st.Lock == hypervisor.LockLocked {
				st.Lock = hypervisor.LockUnlocked
			}
			return st
		}
		return &statusOverride{d, fix}
	}},
	{"unlock-stops-running", "§6.1", "lock state", func(d hypervisor.Driver) hypervisor.Driver {
		// Unlock of a running VM powers it off first, to be helpful.
		return &unlockOverride{d, func(ctx context.Context, vm string) error {
			if st, err := d.Status(ctx, vm); err == nil && !st.Power.IsOff() {
				if err := offFirst(ctx, d, vm); err != nil {
					return asOp(err, hypervisor.OpUnlock)
				}
			}
			return d.Unlock(ctx, vm)
		}}
	}},
	{"start-locked-invalid-state", "§4.3", "lock state", func(d hypervisor.Driver) hypervisor.Driver {
		// The hypervisor's refusal to start a VM whose session is held is
		// mapped to invalid state.
		return &startOverride{d, func(ctx context.Context, vm string) error {
			return recode(d.Start(ctx, vm), hypervisor.CodeLocked, hypervisor.CodeInvalidState)
		}}
	}},
	{"restore-locked-invalid-state", "§7.2b", "lock state", func(d hypervisor.Driver) hypervisor.Driver {
		// The same for a restore.
		return &restoreOverride{d, func(ctx context.Context, vm, snapshot string) error {
			return recode(d.Restore(ctx, vm, snapshot), hypervisor.CodeLocked, hypervisor.CodeInvalidState)
		}}
	}},

	// The stop ladder.
	{"emergency-lingering-locked", "§5.2b", "stop ladder", func(d hypervisor.Driver) hypervisor.Driver {
		// An emergency stop of an off VM whose session is held answers
		// locked, as if another client held it, and kills nothing.
		return &stopOverride{d, func(ctx context.Context, vm string, m hypervisor.StopMethod) error {
			if m == hypervisor.StopEmergency {
				if st, err := d.Status(ctx, vm); err == nil && st.Power.IsOff() && st.Lock == hypervisor.LockLocked {
					return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStop, vm, "the session is held")
				}
			}
			return d.Stop(ctx, vm, m)
		}}
	}},
	{"acpi-off-invalid-state", "§5.2a", "stop ladder", func(d hypervisor.Driver) hypervisor.Driver {
		// The power button of a VM that is off is refused.
		return &stopOverride{d, func(ctx context.Context, vm string, m hypervisor.StopMethod) error {
			if m == hypervisor.StopACPI {
				if st, err := d.Status(ctx, vm); err == nil && st.Power.IsOff() {
					return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStop, vm, "the VM is not running")
				}
			}
			return d.Stop(ctx, vm, m)
		}}
	}},
	{"acpi-stopping-failed", "§5.5", "stop ladder", func(d hypervisor.Driver) hypervisor.Driver {
		// A second press of the power button, the VM already on its way
		// off, is the hypervisor's error: failed.
		return &stopOverride{d, func(ctx context.Context, vm string, m hypervisor.StopMethod) error {
			if m == hypervisor.StopACPI {
				if st, err := d.Status(ctx, vm); err == nil && st.Power == hypervisor.PowerStopping {
					return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, vm, "the power button was already pressed")
				}
			}
			return d.Stop(ctx, vm, m)
		}}
	}},
	{"poweroff-starting-failed", "§5.5", "stop ladder", func(d hypervisor.Driver) hypervisor.Driver {
		// A power-off of a VM still starting is the hypervisor's error:
		// failed.
		return &stopOverride{d, func(ctx context.Context, vm string, m hypervisor.StopMethod) error {
			if m != hypervisor.StopACPI {
				if st, err := d.Status(ctx, vm); err == nil && st.Power == hypervisor.PowerStarting {
					return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, vm, "the VM is not ready to be powered off")
				}
			}
			return d.Stop(ctx, vm, m)
		}}
	}},

	// Restores.
	{"restore-running-powers-off", "§7.2a", "restores", func(d hypervisor.Driver) hypervisor.Driver {
		// A restore of a running VM powers it off first, to be helpful.
		return &restoreOverride{d, func(ctx context.Context, vm, snapshot string) error {
			if st, err := d.Status(ctx, vm); err == nil && !st.Power.IsOff() {
				if err := offFirst(ctx, d, vm); err != nil {
					return asOp(err, hypervisor.OpRestore)
				}
			}
			return d.Restore(ctx, vm, snapshot)
		}}
	}},
	{"restore-unknown-to-current", "§7.1b", "restores", func(d hypervisor.Driver) hypervisor.Driver {
		// A snapshot it cannot find falls back to the current one.
		return &restoreOverride{d, func(ctx context.Context, vm, snapshot string) error {
			err := d.Restore(ctx, vm, snapshot)
			if hypervisor.IsNotFound(err) && snapshot != "" {
				if _, serr := d.Status(ctx, vm); serr == nil {
					return d.Restore(ctx, vm, "")
				}
			}
			return err
		}}
	}},
	{"restore-empty-not-found", "§7.1a", "restores", func(d hypervisor.Driver) hypervisor.Driver {
		// An empty name is looked up as a snapshot's name, once the VM
		// was found off and unlocked.
		return &restoreOverride{d, func(ctx context.Context, vm, snapshot string) error {
			if snapshot == "" {
				if st, err := d.Status(ctx, vm); err == nil && st.Power.IsOff() && st.Lock == hypervisor.LockUnlocked {
					return hypervisor.NewError(hypervisor.CodeNotFound, hypervisor.OpRestore, vm, "no snapshot named %q", snapshot)
				}
			}
			return d.Restore(ctx, vm, snapshot)
		}}
	}},

	// Watches.
	{"watch-power-only", "§10.1b", "watches", func(d hypervisor.Driver) hypervisor.Driver {
		// A change is a change of power state: a lock that goes, or a
		// snapshot restored to, is not delivered.
		return &watchOverride{d, func(in <-chan hypervisor.Status, send func(hypervisor.Status)) {
			var last *hypervisor.Status
			for st := range in {
				if last != nil && last.Power == st.Power {
					continue
				}
				last = &st
				send(st)
			}
		}}
	}},
	{"watch-no-first", "§10.1a", "watches", func(d hypervisor.Driver) hypervisor.Driver {
		// The watch begins with the first change, not the current state.
		return &watchOverride{d, func(in <-chan hypervisor.Status, send func(hypervisor.Status)) {
			first := true
			for st := range in {
				if !first {
					send(st)
				}
				first = false
			}
		}}
	}},
	{"watch-ends-when-off", "§10.1b", "watches", func(d hypervisor.Driver) hypervisor.Driver {
		// A VM that went off is taken as gone: the watch closes.
		return &watchOverride{d, func(in <-chan hypervisor.Status, send func(hypervisor.Status)) {
			first := true
			for st := range in {
				send(st)
				if !first && st.Power.IsOff() {
					return
				}
				first = false
			}
		}}
	}},

	// Status.
	{"state-changed-now", "§3.5", "status", func(d hypervisor.Driver) hypervisor.Driver {
		// StateChanged is when the status was read.
		return &statusOverride{d, func(st hypervisor.Status) hypervisor.Status {
			st.StateChanged = time.Now()
			return st
		}}
	}},
	{"snapshot-empty-while-running", "§3.4", "status", func(d hypervisor.Driver) hypervisor.Driver {
		// A running VM's current snapshot is not looked up.
		return &statusOverride{d, func(st hypervisor.Status) hypervisor.Status {
			if !st.Power.IsOff() && st.Power != hypervisor.PowerUnknown {
				st.CurrentSnapshot = ""
			}
			return st
		}}
	}},

	// Errors.
	{"guest-missing-vm-invalid-state", "§11.3", "errors", func(d hypervisor.Driver) hypervisor.Driver {
		// A guest operation on a VM that does not exist finds no running
		// guest: invalid state.
		missing := func(ctx context.Context, vm string, err error) error {
			if !hypervisor.IsNotFound(err) {
				return err
			}
			if _, serr := d.Status(ctx, vm); hypervisor.IsNotFound(serr) {
				return recode(err, hypervisor.CodeNotFound, hypervisor.CodeInvalidState)
			}
			return err
		}
		return &guestOverride{d, missing}
	}},
	{"cleanup-error-names-restore", "§11.2", "errors", func(d hypervisor.Driver) hypervisor.Driver {
		// A cleanup's failure is the failure of the step inside it, as
		// that step named it: a restore's.
		return &cleanupOverride{d, func(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
			res, err := d.Cleanup(ctx, vm, req)
			if hypervisor.IsNotFound(err) && req.Restore {
				if _, serr := d.Status(ctx, vm); serr == nil {
					err = asOp(err, hypervisor.OpRestore)
				}
			}
			return res, err
		}}
	}},

	// Concurrency.
	{"second-restore-failed", "§13.1b", "concurrency", func(d hypervisor.Driver) hypervisor.Driver {
		// A restore that finds another of the same VM under way is the
		// hypervisor's error: failed.
		var mu sync.Mutex
		busy := map[string]bool{}
		return &restoreOverride{d, func(ctx context.Context, vm, snapshot string) error {
			mu.Lock()
			if busy[vm] {
				mu.Unlock()
				return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpRestore, vm, "a restore is already running")
			}
			busy[vm] = true
			mu.Unlock()
			defer func() {
				mu.Lock()
				delete(busy, vm)
				mu.Unlock()
			}()
			return d.Restore(ctx, vm, snapshot)
		}}
	}},
}

// recode gives err the code to instead of from, keeping the rest.
func recode(err error, from, to hypervisor.Code) error {
	var e *hypervisor.Error
	if errors.As(err, &e) && e.Code == from {
		c := *e
		c.Code = to
		return &c
	}
	return err
}

// asOp gives err the operation op, as the operation that answers it
// names itself.
func asOp(err error, op string) error {
	var e *hypervisor.Error
	if errors.As(err, &e) {
		c := *e
		c.Op = op
		return &c
	}
	return err
}

// offFirst powers a running VM off and waits until it is off-like.
func offFirst(ctx context.Context, d hypervisor.Driver, vm string) error {
	if err := d.Stop(ctx, vm, hypervisor.StopPowerOff); err != nil {
		return err
	}
	return untilOff(ctx, d, vm)
}

// untilOff waits until Status says vm is off-like.
func untilOff(ctx context.Context, d hypervisor.Driver, vm string) error {
	for {
		st, err := d.Status(ctx, vm)
		if err != nil {
			return err
		}
		if st.Power.IsOff() {
			return nil
		}
		select {
		case <-ctx.Done():
			return hypervisor.FromContext(ctx, hypervisor.OpStop, vm)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// The wrappers, each replacing one operation (or the status both Status
// and Watch report).

type cleanupOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error)
}

func (o *cleanupOverride) Cleanup(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	return o.f(ctx, vm, req)
}

type copyInOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm, hostPath, guestPath string) error
}

func (o *copyInOverride) CopyIn(ctx context.Context, vm, hostPath, guestPath string) error {
	return o.f(ctx, vm, hostPath, guestPath)
}

type copyOutOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm, guestPath, hostPath string) error
}

func (o *copyOutOverride) CopyOut(ctx context.Context, vm, guestPath, hostPath string) error {
	return o.f(ctx, vm, guestPath, hostPath)
}

type execOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error)
}

func (o *execOverride) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	return o.f(ctx, vm, req)
}

type startOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm string) error
}

func (o *startOverride) Start(ctx context.Context, vm string) error { return o.f(ctx, vm) }

type stopOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm string, m hypervisor.StopMethod) error
}

func (o *stopOverride) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	return o.f(ctx, vm, m)
}

type unlockOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm string) error
}

func (o *unlockOverride) Unlock(ctx context.Context, vm string) error { return o.f(ctx, vm) }

type restoreOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm, snapshot string) error
}

func (o *restoreOverride) Restore(ctx context.Context, vm, snapshot string) error {
	return o.f(ctx, vm, snapshot)
}

// statusOverride changes every status the driver reports, by Status and
// by Watch alike.
type statusOverride struct {
	hypervisor.Driver
	f func(hypervisor.Status) hypervisor.Status
}

func (o *statusOverride) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	st, err := o.Driver.Status(ctx, vm)
	if err != nil {
		return st, err
	}
	return o.f(st), nil
}

func (o *statusOverride) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	in, err := o.Driver.Watch(ctx, vm)
	if err != nil {
		return nil, err
	}
	out := make(chan hypervisor.Status)
	go func() {
		defer close(out)
		for st := range in {
			select {
			case out <- o.f(st):
			case <-ctx.Done():
			}
		}
	}()
	return out, nil
}

// watchOverride passes a watch's statuses through f, which sends what
// it delivers with send and returns when it ends the stream; the rest of
// the driver's stream is read and dropped, and the channel closed.
type watchOverride struct {
	hypervisor.Driver
	f func(in <-chan hypervisor.Status, send func(hypervisor.Status))
}

func (o *watchOverride) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	in, err := o.Driver.Watch(ctx, vm)
	if err != nil {
		return nil, err
	}
	out := make(chan hypervisor.Status)
	go func() {
		o.f(in, func(st hypervisor.Status) {
			select {
			case out <- st:
			case <-ctx.Done():
			}
		})
		close(out)
		for range in {
		}
	}()
	return out, nil
}

// guestOverride passes the errors of the three guest operations through
// f.
type guestOverride struct {
	hypervisor.Driver
	f func(ctx context.Context, vm string, err error) error
}

func (o *guestOverride) CopyIn(ctx context.Context, vm, hostPath, guestPath string) error {
	return o.f(ctx, vm, o.Driver.CopyIn(ctx, vm, hostPath, guestPath))
}

func (o *guestOverride) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	res, err := o.Driver.Exec(ctx, vm, req)
	return res, o.f(ctx, vm, err)
}

func (o *guestOverride) CopyOut(ctx context.Context, vm, guestPath, hostPath string) error {
	return o.f(ctx, vm, o.Driver.CopyOut(ctx, vm, guestPath, hostPath))
}

// brokenVerdict is what one run made of a broken driver.
type brokenVerdict struct {
	caught bool
	what   string // the failed checks, or the model's deviation
	took   time.Duration
	ops    int
	err    error
}

// exampleFixtures leaves the target the VMs the example driver's test
// names (a VM with two snapshots and a peer), none of the VMs in odd
// states the fake can stage.
func exampleFixtures(t conformance.Target) conformance.Target {
	t.LockVM, t.DeadlineVM, t.UnmappedVM = "", "", ""
	return t
}

// byChecks runs the named checks, and no model, against the driver b
// makes.
func byChecks(b brokenDriver, fixtures func(conformance.Target) conformance.Target) brokenVerdict {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	begun := time.Now()
	rep, err := conformance.Collect(ctx, fixtures(suiteTarget(conformance.InProcess("fake", brokenFactory(b), suiteWorld("")))), conformance.Options{})
	v := brokenVerdict{took: time.Since(begun), err: err}
	if err != nil {
		return v
	}
	var failed []string
	for _, r := range rep.Results {
		if r.Outcome == conformance.Fail {
			failed = append(failed, r.Check+" ("+r.Clause+")")
		}
	}
	v.caught, v.what = len(failed) > 0, strings.Join(failed, ", ")
	return v
}

// byModel runs the model alone, bounded as the violation modes' test
// bounds it, against the driver b makes.
func byModel(b brokenDriver, fixtures func(conformance.Target) conformance.Target) brokenVerdict {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := conformance.Exploration{Operations: searchOps, Shrink: time.Minute, ShrinkTo: handful}
	target := fixtures(modelTarget(conformance.InProcess("fake", brokenFactory(b), modelWorld("")), e))
	rep, err := conformance.Collect(ctx, target, conformance.Options{Match: func(string) bool { return false }})
	v := brokenVerdict{err: err}
	if err != nil {
		return v
	}
	m := rep.Model
	v.took, v.ops = m.Duration, m.Operations
	switch {
	case m.Deviation != nil:
		d := m.Deviation
		v.caught = true
		v.what = fmt.Sprintf("%s in %d steps (%d found), seed %d", d.Rules, len(d.Script), d.Found, d.Seed)
	case m.Error != "":
		v.err = errors.New(m.Error)
	}
	return v
}

// modelRuns is how many explorations, each from a seed of its own, the
// measurement runs per broken driver: whether the model catches one
// within its bound is a matter of chance, and two runs show how much.
const modelRuns = 2

// What the named checks and the model each catch of the broken drivers,
// with every fixture the fake can stage and with the example driver's
// alone: the measurement behind docs/conformance.md's figures. It takes
// tens of minutes, so it runs only when asked:
//
//	SANDBOX_BROKEN_DRIVERS=1 go test ./plugins/fake -run TestWhatTheModelCatchesThatTheChecksMiss -v -timeout 2h
//
// The reference fake, first, must pass both: a catch is a catch of the
// mistake, not of the fixtures.
func TestWhatTheModelCatchesThatTheChecksMiss(t *testing.T) {
	if os.Getenv("SANDBOX_BROKEN_DRIVERS") == "" {
		t.Skip("a measurement of tens of minutes: SANDBOX_BROKEN_DRIVERS=1 runs it")
	}
	reference := brokenDriver{name: "reference", wrap: func(d hypervisor.Driver) hypervisor.Driver { return d }}
	drivers := append([]brokenDriver{reference}, brokenDrivers...)
	fixtureSets := []struct {
		name string
		f    func(conformance.Target) conformance.Target
	}{{"every fixture", func(t conformance.Target) conformance.Target { return t }}, {"the example's fixtures", exampleFixtures}}
	type row struct {
		checks [2]brokenVerdict
		model  [2][modelRuns]brokenVerdict
	}
	rows := make([]row, len(drivers))
	var wg sync.WaitGroup
	slots := make(chan struct{}, 6)
	for i, b := range drivers {
		for j, fs := range fixtureSets {
			for run := -1; run < modelRuns; run++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					slots <- struct{}{}
					defer func() { <-slots }()
					if run < 0 {
						rows[i].checks[j] = byChecks(b, fs.f)
					} else {
						rows[i].model[j][run] = byModel(b, fs.f)
					}
				}()
			}
		}
	}
	wg.Wait()
	for j, fs := range fixtureSets {
		r := rows[0]
		require.NoError(t, r.checks[j].err)
		require.False(t, r.checks[j].caught, "with %s, the reference fails checks: %s", fs.name, r.checks[j].what)
		for _, m := range r.model[j] {
			require.NoError(t, m.err)
			require.False(t, m.caught, "with %s, the reference deviates from the model: %s", fs.name, m.what)
		}
	}
	mark := func(v brokenVerdict) string {
		if v.caught {
			return "caught"
		}
		return "missed"
	}
	for j, fs := range fixtureSets {
		var checks, always, sometimes, modelOnly, checksOnly, neither int
		var ops int
		var took time.Duration
		t.Logf("with %s:", fs.name)
		for i, b := range drivers[1:] {
			r := rows[i+1]
			c := r.checks[j]
			if c.err != nil {
				t.Errorf("%s: checks: %v", b.name, c.err)
				continue
			}
			line := fmt.Sprintf("  %-30s %-6s %-14s checks %s (%s); model", b.name, b.rule, b.area, mark(c), c.what)
			caught := 0
			for _, m := range r.model[j] {
				if m.err != nil {
					t.Errorf("%s: model: %v", b.name, m.err)
				}
				line += fmt.Sprintf(" %s in %d operations, %s (%s);", mark(m), m.ops, m.took.Round(time.Second), m.what)
				if m.caught {
					caught++
				}
				ops += m.ops
				took += m.took
			}
			t.Log(line)
			if c.caught {
				checks++
			}
			switch {
			case caught == modelRuns:
				always++
			case caught > 0:
				sometimes++
			}
			switch {
			case caught > 0 && !c.caught:
				modelOnly++
			case caught == 0 && c.caught:
				checksOnly++
			case caught == 0:
				neither++
			}
		}
		t.Logf("with %s, of %d broken drivers: the checks catch %d; the model %d in each of its %d runs, %d more in some; "+
			"the model and no check %d, the checks and no run of the model %d, neither %d; the model ran %.0f operations a minute",
			fs.name, len(drivers)-1, checks, always, modelRuns, sometimes, modelOnly, checksOnly, neither, float64(ops)/took.Minutes())
	}
}
