package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// Pool is the one scheduler of VMs, for `sandbox run` and `sandbox serve`
// alike: it hands a task a free VM of its profile under the VM's lease,
// takes it back with what the task left it as, keeps VMs that turned out
// unusable out of service with the reason, and holds a VM for an
// operator's maintenance. Every lease policy lives here:
//
//   - Tasks are served in the order they asked: a VM that comes free goes
//     to the longest-waiting task that can use it.
//   - A VM whose lease another process holds (another sandbox, an
//     operator's `vm cleanup`) is passed over, not waited on, and looked at
//     again LeaseRecheck later; the task takes another VM if one is free.
//   - A VM whose lease cannot be taken at all, or that a task could not make
//     ready, or that a task left quarantined, leaves service; the task that
//     found it so moves to another VM, at no cost to it.
//   - A task none of whose VMs is left in service ends with a *NoVMError.
type Pool struct {
	engine   *Engine
	m        *lifecycle.Manager
	vms      map[string]lifecycle.VM
	profiles map[string]config.Profile
	// serves maps a profile to its VMs in this pool, in the profile's order.
	serves map[string][]string

	mu sync.Mutex
	// busy VMs run a task; held ones are kept from new tasks for an
	// operator (a count, as holds may nest); out ones left service, with
	// why; elsewhere ones were leased by another process, until when to
	// look again.
	busy      map[string]bool
	held      map[string]int
	out       map[string]Outcome
	elsewhere map[string]time.Time
	waiters   []*waiter
	tickets   uint64
	// outChanged: a VM left or rejoined service since the line was last
	// looked at whole.
	outChanged bool
	recheck    *time.Timer
	// idle is closed and replaced whenever a VM stops being busy, for
	// maintenance that waits for one.
	idle chan struct{}
}

// LeaseRecheck is how long the pool passes over a VM whose lease another
// process holds before it tries the lease again.
const LeaseRecheck = time.Second

// waiter is a task waiting for a VM.
type waiter struct {
	// ticket orders the waiters: the task that asked first is served
	// first, also when it comes back for another VM.
	ticket     uint64
	candidates []string
	// got receives the VM assigned, or the error that ends the wait.
	got chan grant
}

type grant struct {
	vm  string
	err error
}

// NewPool builds the pool of vms for profiles (a VM not listed by any
// profile is left out), asking each VM's driver once what it can do: a VM
// whose driver lacks what one of its profiles needs is an error now, not a
// failure of every task later.
func NewPool(ctx context.Context, e *Engine, vms []lifecycle.VM, profiles []config.Profile) (*Pool, error) {
	p := &Pool{engine: e, m: e.m, vms: map[string]lifecycle.VM{}, profiles: map[string]config.Profile{},
		serves: map[string][]string{}, busy: map[string]bool{}, held: map[string]int{}, out: map[string]Outcome{},
		elsewhere: map[string]time.Time{}, idle: make(chan struct{})}
	byName := map[string]lifecycle.VM{}
	for _, vm := range vms {
		byName[vm.Name] = vm
	}
	infos := map[hypervisor.Driver]hypervisor.Info{}
	for _, prof := range profiles {
		p.profiles[prof.Name] = prof
		for _, name := range prof.VMs {
			vm, ok := byName[name]
			if !ok {
				continue
			}
			info, ok := infos[vm.Driver]
			if !ok {
				var err error
				if info, err = vm.Driver.Info(ctx); err != nil {
					return nil, fmt.Errorf("VM %s (plugin %s): %w", vm.Name, vm.Plugin, err)
				}
				infos[vm.Driver] = info
			}
			for _, c := range needed(prof) {
				if !info.Capabilities.Has(c) {
					return nil, fmt.Errorf("VM %s cannot run profile %s: its driver (plugin %s, %s %s) does not declare %s; "+
						"see `sandbox plugins` for what it can do", vm.Name, prof.Name, vm.Plugin, info.Name, info.Version, c)
				}
			}
			p.vms[name] = vm
			p.serves[prof.Name] = append(p.serves[prof.Name], name)
		}
	}
	return p, nil
}

// needed is what a VM's driver must declare to run profile p.
func needed(p config.Profile) []hypervisor.Capability {
	caps := []hypervisor.Capability{hypervisor.CapRestore, hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec}
	if len(p.Artifacts) > 0 {
		caps = append(caps, hypervisor.CapGuestCopyOut)
	}
	return caps
}

// Events is the stream the pool's engine publishes every transition on.
func (p *Pool) Events() *Events { return p.engine.events }

// VMs are the pool's VMs, by name.
func (p *Pool) VMs() map[string]lifecycle.VM { return p.vms }

// Profiles are every profile the pool was built for, by name, including
// those with no VM in it.
func (p *Pool) Profiles() map[string]config.Profile { return p.profiles }

// Profile returns the named profile, if the pool knows it.
func (p *Pool) Profile(name string) (config.Profile, bool) {
	prof, ok := p.profiles[name]
	return prof, ok
}

// Serves returns the VMs of the pool that run profile, in its order.
func (p *Pool) Serves(profile string) []string { return p.serves[profile] }

// NoVMError ends a task none of whose VMs is left in service.
type NoVMError struct {
	// Profile is the task's profile.
	Profile string
	// Why says, per VM of the task, why it cannot take it.
	Why map[string]string
	// Skipped are the VMs the task itself found unusable on the way.
	Skipped []SkippedVM
}

func (e *NoVMError) Error() string {
	if len(e.Why) == 0 {
		return fmt.Sprintf("profile %s has no VM here to run on", e.Profile)
	}
	var names []string
	for _, vm := range slices.Sorted(maps.Keys(e.Why)) {
		names = append(names, fmt.Sprintf("%s (%s)", vm, e.Why[vm]))
	}
	return fmt.Sprintf("no usable VM left for profile %s: %s", e.Profile, strings.Join(names, ", "))
}

// Run runs the task on a VM of its profile (its pinned VM, if it has one)
// and returns its result once it has ended: done, failed, or cancelled
// because ctx ended, its VM cleaned. A VM that turns out unusable leaves
// service and the task moves to another. The error is for a task that
// never ran to an end: a *NoVMError when no VM of the task is left in
// service, or ctx's error when it ended before a VM was free.
func (p *Pool) Run(ctx context.Context, t Task) (*Result, error) {
	return p.queue(t).run(ctx)
}

// queued is a task in the pool's line for VMs.
type queued struct {
	p *Pool
	t Task
	r *Result
	w *waiter
	// registered: w is in the line (it is from queue until a VM is
	// granted, and again whenever the task comes back for another).
	registered bool
}

// queue puts the task in the line for a VM, at once: tasks queued one
// after the other get VMs in that order, whichever goroutine then waits
// first.
func (p *Pool) queue(t Task) *queued {
	q := &queued{p: p, t: t, r: newResult(t)}
	p.engine.transition(t, q.r, StepQueued, "")
	candidates := p.serves[t.Profile.Name]
	if t.VM != "" {
		candidates = []string{t.VM}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tickets++
	q.w = &waiter{ticket: p.tickets, candidates: candidates, got: make(chan grant, 1)}
	p.registerLocked(q.w)
	q.registered = true
	return q
}

// registerLocked puts w in the line, in the order of its ticket, and hands
// out what is free.
func (p *Pool) registerLocked(w *waiter) {
	if g, done := p.grantLocked(w); done {
		w.got <- g
		return
	}
	i, _ := slices.BinarySearchFunc(p.waiters, w, func(a, b *waiter) int { return cmp.Compare(a.ticket, b.ticket) })
	p.waiters = slices.Insert(p.waiters, i, w)
	p.armRecheckLocked()
}

// run waits for VMs and runs the task until it ends.
func (q *queued) run(ctx context.Context) (*Result, error) {
	p := q.p
	for {
		lease, err := q.take(ctx)
		if err != nil {
			var nv *NoVMError
			if errors.As(err, &nv) {
				nv.Profile, nv.Skipped = q.t.Profile.Name, q.r.Skipped
			}
			return nil, err
		}
		out := p.engine.runTask(ctx, lease, q.t, q.r)
		lease.Release()
		p.give(lease.VM().Name, out)
		if q.r.State.Final() {
			return q.r, nil
		}
	}
}

// take waits for a free VM for the task and returns it leased.
func (q *queued) take(ctx context.Context) (*lifecycle.Lease, error) {
	p, w := q.p, q.w
	for {
		if !q.registered {
			p.mu.Lock()
			p.registerLocked(w)
			p.mu.Unlock()
		}
		q.registered = false
		var g grant
		select {
		case g = <-w.got:
		case <-ctx.Done():
			p.mu.Lock()
			if i := slices.Index(p.waiters, w); i >= 0 {
				p.waiters = slices.Delete(p.waiters, i, i+1)
				p.mu.Unlock()
				return nil, ctx.Err()
			}
			p.mu.Unlock()
			// A VM was granted as ctx ended: give it back.
			if g = <-w.got; g.err == nil {
				p.give(g.vm, Outcome{State: VMUsable})
			}
			return nil, ctx.Err()
		}
		if g.err != nil {
			return nil, g.err
		}
		vm := p.vms[g.vm]
		lease, err := p.m.TryLease(ctx, vm)
		if err == nil {
			return lease, nil
		}
		// The task keeps its place in the line (its ticket) while it looks
		// again for a VM.
		if ctx.Err() != nil {
			p.give(g.vm, Outcome{State: VMUsable})
			return nil, ctx.Err()
		}
		p.mu.Lock()
		delete(p.busy, g.vm)
		if errors.Is(err, lifecycle.ErrLeaseHeld) {
			p.elsewhere[g.vm] = time.Now().Add(LeaseRecheck)
		} else {
			p.out[g.vm] = Outcome{State: VMUnusable, Reason: err.Error()}
			p.outChanged = true
		}
		p.notifyIdleLocked()
		p.dispatchLocked()
		p.mu.Unlock()
	}
}

// give takes a VM back from a task, with what the task left it as.
func (p *Pool) give(vm string, out Outcome) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, vm)
	if !out.Usable() {
		p.out[vm] = out
		p.outChanged = true
	}
	p.notifyIdleLocked()
	p.dispatchLocked()
}

// dispatchLocked hands free VMs to waiters, longest-waiting first, and ends
// the wait of those none of whose VMs is left in service.
func (p *Pool) dispatchLocked() {
	now := time.Now()
	for vm, until := range p.elsewhere {
		if !now.Before(until) {
			delete(p.elsewhere, vm)
		}
	}
	// Waiters are only looked at while a VM is free, or after a VM left
	// service (its waiters may have none left): a line of thousands of
	// tasks costs nothing while every VM works.
	free := 0
	for name := range p.vms {
		if p.freeLocked(name) {
			free++
		}
	}
	kept := p.waiters[:0]
	for i, w := range p.waiters {
		if free == 0 && !p.outChanged {
			kept = append(kept, p.waiters[i:]...)
			break
		}
		if g, done := p.grantLocked(w); done {
			if g.err == nil {
				free--
			}
			w.got <- g
			continue
		}
		kept = append(kept, w)
	}
	clear(p.waiters[len(kept):])
	p.waiters = kept
	p.outChanged = false
	p.armRecheckLocked()
}

// armRecheckLocked has the line looked at again when the first VM passed
// over for being leased elsewhere is due another try.
func (p *Pool) armRecheckLocked() {
	var next time.Time
	for _, until := range p.elsewhere {
		if next.IsZero() || until.Before(next) {
			next = until
		}
	}
	if next.IsZero() || len(p.waiters) == 0 {
		return
	}
	if p.recheck != nil {
		p.recheck.Stop()
	}
	p.recheck = time.AfterFunc(time.Until(next), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.dispatchLocked()
	})
}

// freeLocked reports whether a VM of the pool can be handed out now.
func (p *Pool) freeLocked(name string) bool {
	return p.out[name].Usable() && !p.busy[name] && p.held[name] == 0 && p.elsewhere[name].IsZero()
}

// grantLocked finds w a VM, or the error that ends its wait; done is false
// when w must wait on.
func (p *Pool) grantLocked(w *waiter) (g grant, done bool) {
	why := map[string]string{}
	wait := false
	for _, name := range w.candidates {
		switch _, ours := p.vms[name]; {
		case !ours:
			why[name] = "not in this pool"
		case !p.out[name].Usable():
			why[name] = p.out[name].Reason
		case p.busy[name] || p.held[name] > 0 || !p.elsewhere[name].IsZero():
			wait = true
		default:
			p.busy[name] = true
			return grant{vm: name}, true
		}
	}
	if wait {
		return grant{}, false
	}
	return grant{err: &NoVMError{Why: why}}, true
}

func (p *Pool) notifyIdleLocked() {
	close(p.idle)
	p.idle = make(chan struct{})
}

// Unusable names the VMs out of service, with why.
func (p *Pool) Unusable() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for vm, o := range p.out {
		out[vm] = o.Reason
	}
	return out
}

// Hold keeps new tasks off a VM of the pool and waits, within ctx, until
// its current task (if any) has ended: an operator's maintenance (cleanup,
// reconcile) then has it alone. done ends the hold; done(true) also puts a
// VM that had left service back into it, for a maintenance that made it
// clean.
func (p *Pool) Hold(ctx context.Context, vm string) (done func(restored bool), err error) {
	if _, ok := p.vms[vm]; !ok {
		return nil, fmt.Errorf("no VM %q in this pool", vm)
	}
	p.mu.Lock()
	p.held[vm]++
	p.mu.Unlock()
	var once sync.Once
	done = func(restored bool) {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.held[vm]--
			if p.held[vm] == 0 {
				delete(p.held, vm)
			}
			if restored {
				delete(p.out, vm)
				p.outChanged = true
			}
			p.dispatchLocked()
		})
	}
	for {
		p.mu.Lock()
		busy, idle := p.busy[vm], p.idle
		p.mu.Unlock()
		if !busy {
			return done, nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			done(false)
			return nil, ctx.Err()
		}
	}
}
