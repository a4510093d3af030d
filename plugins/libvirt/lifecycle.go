package libvirt

import (
	"context"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Start starts the domain (§4): a domain clean at a snapshot with the
// guest's memory is reverted to it, which libvirt does by launching QEMU
// with -loadvm; any other is booted. It returns once libvirt reports the
// domain running. A start the caller's deadline overtakes is undone when
// libvirt finishes it: libvirt cannot abort one (§12.1b).
func (d *Driver) Start(ctx context.Context, name string) error {
	v, release, err := d.begin(ctx, hypervisor.OpStart, name)
	if err != nil {
		return err
	}
	defer release()
	st, o, err := d.observe(ctx, hypervisor.OpStart, v)
	if err != nil {
		return err
	}
	switch {
	case st.Power == hypervisor.PowerRunning || st.Power == hypervisor.PowerStarting:
		return nil // §4.2
	case active(o.state) && st.Power == hypervisor.PowerStopping:
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name, "the domain is %s: its QEMU process is still exiting", st.Raw)
	case active(o.state):
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStart, name, "the domain is %s", st.Raw)
	case st.Lock == hypervisor.LockLocked:
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name, "the domain is %s", st.Raw)
	}
	resume := o.resumes(st.CurrentSnapshot)
	if o.marker != nil {
		// From here on the domain is not clean, whatever comes of the start.
		if err := d.setMarker(ctx, hypervisor.OpStart, v, nil); err != nil {
			return err
		}
	}
	begun := time.Now()
	done := make(chan error, 1)
	go func() {
		err := d.call(context.Background(), hypervisor.OpStart, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
			if resume == "" {
				_, err := l.DomainCreateWithFlags(dom, 0)
				return err
			}
			snap, err := l.DomainSnapshotLookupByName(dom, resume, 0)
			if err != nil {
				return err
			}
			return l.DomainRevertToSnapshot(snap, uint32(golibvirt.DomainSnapshotRevertRunning))
		})
		if err == nil && resume != "" {
			// A revert brings back the definition saved with the snapshot,
			// metadata included: a marker in it would call the domain clean.
			_ = d.setMarker(context.Background(), hypervisor.OpStart, v, nil)
		}
		done <- err
	}()
	select {
	case err = <-done:
	case <-ctx.Done():
		go func() {
			if <-done == nil {
				d.log.Warn("a start outlived its caller's deadline; destroying the domain it started", "vm", name)
				dctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeouts.Stop)
				defer cancel()
				_ = d.destroy(dctx, hypervisor.OpStart, v)
			}
		}()
		return hypervisor.FromContext(ctx, hypervisor.OpStart, name)
	}
	if hypervisor.CodeOf(err) == hypervisor.CodeInvalidState && libvirtCode(err) == golibvirt.ErrOperationInvalid {
		// "domain is already running": another client started it meanwhile.
		if st, _, serr := d.observe(ctx, hypervisor.OpStart, v); serr == nil && st.Power == hypervisor.PowerRunning {
			return nil
		}
	}
	if err != nil {
		return err
	}
	d.log.Info("VM started", "vm", name, "resumed", resume, "took", time.Since(begun))
	return nil
}

// Stop stops the domain (§5): the ACPI power button (libvirt's shutdown),
// a power-off (destroy: SIGTERM to QEMU, SIGKILL ten seconds later), or
// SIGKILL sent by the driver itself to the domain's QEMU process, for when
// libvirtd's destroy hangs or libvirtd does not answer at all.
func (d *Driver) Stop(ctx context.Context, name string, method hypervisor.StopMethod) error {
	if !method.Valid() {
		return hypervisor.NewError(hypervisor.CodeUnsupported, hypervisor.OpStop, name, "no stop method %q", method)
	}
	v, release, err := d.begin(ctx, hypervisor.OpStop, name)
	if err != nil {
		return err
	}
	defer release()
	if method == hypervisor.StopEmergency {
		return d.emergency(ctx, v)
	}
	st, o, err := d.observe(ctx, hypervisor.OpStop, v)
	if err != nil {
		return err
	}
	if !active(o.state) {
		return nil // §5.2: nothing to stop
	}
	if method == hypervisor.StopACPI {
		if st.Power != hypervisor.PowerRunning {
			// A paused guest cannot act on the button (§5.5).
			return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStop, name,
				"the domain is %s; the power button needs a running guest", st.Raw)
		}
		err := d.call(ctx, hypervisor.OpStop, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
			return l.DomainShutdownFlags(dom, golibvirt.DomainShutdownAcpiPowerBtn)
		})
		if err != nil {
			return err
		}
		d.log.Info("power button pressed", "vm", name)
		return nil
	}
	return d.destroy(ctx, hypervisor.OpStop, v)
}

// destroy is libvirt's destroy, which returns once the QEMU process is
// gone; "domain is not running" means it got off by itself meanwhile.
func (d *Driver) destroy(ctx context.Context, op string, v *vm) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Stop)
	defer cancel()
	err := d.call(ctx, op, v, func(l *golibvirt.Libvirt, dom golibvirt.Domain) error {
		return l.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault)
	})
	if libvirtCode(err) == golibvirt.ErrOperationInvalid {
		return nil
	}
	if err != nil {
		return err
	}
	d.log.Info("VM powered off", "vm", v.name)
	return nil
}

// emergency kills the domain's QEMU process (§5.1b), found by the UUID on
// its command line; libvirt sees it die and says shut off (crashed). On an
// off domain it kills a QEMU process of the domain that libvirt lost track
// of and that still holds its disk (§5.2b); another holder is not a VM
// process, and the domain is locked. Where no process of the domain can be
// seen, it falls back to libvirt's destroy.
func (d *Driver) emergency(ctx context.Context, v *vm) error {
	st, o, err := d.observe(ctx, hypervisor.OpStop, v)
	var procs []process
	if err == nil && !active(o.state) {
		if st.Lock == hypervisor.LockUnlocked {
			return nil // §5.2a
		}
		procs = o.holders
	} else if err == nil || hypervisor.CodeOf(err) == hypervisor.CodeUnavailable || hypervisor.CodeOf(err) == hypervisor.CodeTimeout {
		// Running, or libvirtd does not answer: the process is found
		// without it, from the UUID libvirt gave the domain.
		d.mu.Lock()
		dom, known := d.domains[v.name]
		d.mu.Unlock()
		if err == nil {
			dom, known = o.dom, true
		}
		if known {
			procs = scan(uuidString(dom.UUID), nil)
		}
		if ctx.Err() != nil {
			return hypervisor.FromContext(ctx, hypervisor.OpStop, v.name)
		}
	} else {
		return err
	}
	killed := 0
	for _, p := range procs {
		if !p.vm {
			continue
		}
		if err := kill(p.pid); err != nil {
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStop, v.name, "kill %s: %v", p, err)
		}
		d.log.Warn("QEMU process killed", "vm", v.name, "process", p.String())
		killed++
	}
	switch {
	case killed == 0 && err == nil && !active(o.state):
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStop, v.name,
			"no VM process of the domain to kill: %s", st.Raw)
	case killed == 0 && err != nil:
		return err
	case killed == 0:
		return d.destroy(ctx, hypervisor.OpStop, v)
	}
	// Confirmed by state: libvirt reaps the process and says shut off.
	d.waitFor(ctx, v, d.cfg.Timeouts.Stop, func(st hypervisor.Status) bool { return st.Power.IsOff() && st.Lock == hypervisor.LockUnlocked })
	return nil
}

// waitFor polls the domain's status until cond holds (true), or ctx or
// bound ends (false), with a last look just before the end; it returns the
// last status read. libvirt's events are not waited on here: a lock held
// by another process raises none.
func (d *Driver) waitFor(ctx context.Context, v *vm, bound time.Duration, cond func(hypervisor.Status) bool) (hypervisor.Status, bool) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var last hypervisor.Status
	err := wait.Until(ctx, statePoll, func(ctx context.Context) (bool, error) {
		st, _, err := d.observe(ctx, hypervisor.OpStatus, v)
		if err != nil {
			return false, nil // libvirtd may answer at the next look
		}
		last = st
		return cond(st), nil
	})
	return last, err == nil
}

// statePoll paces waitFor's reads of the domain's status.
var statePoll = wait.Policy{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Factor: 2}

// Unlock releases an off domain (§6): a QEMU process of the domain that
// libvirt lost track of is killed; another process holding its disk is
// waited for, at most timeouts.unlock, then the domain is locked.
func (d *Driver) Unlock(ctx context.Context, name string) error {
	v, release, err := d.begin(ctx, hypervisor.OpUnlock, name)
	if err != nil {
		return err
	}
	defer release()
	st, o, err := d.observe(ctx, hypervisor.OpUnlock, v)
	switch {
	case err != nil:
		return err
	case active(o.state):
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpUnlock, name, "the domain is %s; stop it first", st.Raw)
	case st.Lock == hypervisor.LockUnlocked:
		return nil
	}
	return d.unlock(ctx, hypervisor.OpUnlock, v, o)
}

// unlock kills the domain's own stray QEMU processes and waits for the
// other holders of its disks to let go.
func (d *Driver) unlock(ctx context.Context, op string, v *vm, o observation) error {
	for _, p := range o.holders {
		if p.vm {
			if err := kill(p.pid); err != nil {
				return hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "kill %s: %v", p, err)
			}
			d.log.Warn("killed a QEMU process of the domain that libvirt does not know of", "vm", v.name, "process", p.String())
		}
	}
	st, ok := d.waitFor(ctx, v, d.cfg.Timeouts.Unlock, func(st hypervisor.Status) bool { return st.Lock == hypervisor.LockUnlocked })
	if ok {
		d.log.Info("VM unlocked", "vm", v.name)
		return nil
	}
	if err := hypervisor.FromContext(ctx, op, v.name); err != nil {
		return err
	}
	return hypervisor.NewError(hypervisor.CodeLocked, op, v.name, "still held after %s: the domain is %s", d.cfg.Timeouts.Unlock, st.Raw)
}

// Cleanup is the driver's complete cleanup (§8): destroy the domain (or
// kill its QEMU process if destroy fails), release its disks, restore the
// snapshot unless the domain is already clean at it.
func (d *Driver) Cleanup(ctx context.Context, name string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	v, release, err := d.begin(ctx, hypervisor.OpCleanup, name)
	if err != nil {
		return hypervisor.CleanupResult{}, err
	}
	defer release()
	var res hypervisor.CleanupResult
	step := func(action string, begun time.Time, err error) error {
		outcome := "done"
		if err != nil {
			outcome = "failed"
		}
		res.Steps = append(res.Steps, hypervisor.CleanupStep{Action: action, Duration: time.Since(begun), Outcome: outcome})
		return err
	}
	st, o, err := d.observe(ctx, hypervisor.OpCleanup, v)
	if err != nil {
		return res, err
	}
	snapshot := req.Snapshot
	if req.Restore {
		if snapshot == "" {
			snapshot = d.currentOrConfigured(v, st)
		}
		if _, _, err := d.snapshot(ctx, hypervisor.OpCleanup, v, snapshot); err != nil {
			return res, err
		}
	}
	if active(o.state) {
		begun := time.Now()
		if err := d.destroy(ctx, hypervisor.OpCleanup, v); err != nil {
			if cerr := hypervisor.FromContext(ctx, hypervisor.OpCleanup, name); cerr != nil {
				return res, step("destroy", begun, cerr)
			}
			_ = step("destroy", begun, err)
			d.log.Warn("destroy failed; killing the domain's QEMU process", "vm", name, "error", err)
			begun = time.Now()
			if err := d.emergency(ctx, v); err != nil {
				return res, step("kill", begun, err)
			}
			_ = step("kill", begun, nil)
		} else {
			_ = step("destroy", begun, nil)
		}
		if st, o, err = d.observe(ctx, hypervisor.OpCleanup, v); err != nil {
			return res, err
		}
	}
	if st.Lock == hypervisor.LockLocked {
		begun := time.Now()
		if err := d.unlock(ctx, hypervisor.OpCleanup, v, o); err != nil {
			return res, step("wait-unlock", begun, err)
		}
		_ = step("wait-unlock", begun, nil)
		if st, o, err = d.observe(ctx, hypervisor.OpCleanup, v); err != nil {
			return res, err
		}
	}
	clean := o.marker != nil && o.marker.Snapshot == snapshot && st.CurrentSnapshot == snapshot && st.Power != hypervisor.PowerAborted
	if req.Restore && !clean {
		begun := time.Now()
		if err := d.restore(ctx, hypervisor.OpCleanup, v, st, o, snapshot); err != nil {
			return res, step("restore "+snapshot, begun, err)
		}
		_ = step("restore "+snapshot, begun, nil)
	}
	if active(o.state) {
		return res, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCleanup, name, "the domain is still %s", st.Raw)
	}
	return res, nil
}
