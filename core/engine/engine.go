// Package engine runs analysis tasks on VMs: each sample with each chosen
// profile, on whichever VM of the profile is free, through a step machine
// (queued, preparing, restoring, starting, waiting-guest, copying,
// analyzing, collecting, cleaning, done or failed) recorded with a time per
// transition. A VM is held (leased) for a whole task, so it never runs two
// at once, in this process or another; whatever fails, and on
// cancellation, the VM is cleaned (off, unlocked, restored) or quarantined
// with the reason, and a cleanup failure never erases an analysis result.
//
// The engine works on hypervisor.Driver values through the lifecycle
// manager; it never knows a concrete driver. `sandbox run` drives it once.
package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// Options configures an Engine.
type Options struct {
	// Lifecycle performs every VM operation and holds the leases. Required.
	Lifecycle *lifecycle.Manager
	// Logger gets a line per task transition. Defaults to discarding.
	Logger hclog.Logger
	// MaxStarting caps the VMs starting at once; 0 means DefaultMaxStarting.
	MaxStarting int
	// OnEvent, when set, is called at every transition of every task, on
	// the task's goroutine; it must return quickly.
	OnEvent func(Event)
}

// Engine runs analyses. It is safe for concurrent use; the start cap is
// shared by every run of one Engine.
type Engine struct {
	m        *lifecycle.Manager
	log      hclog.Logger
	starting chan struct{}
	onEvent  func(Event)
}

// New returns an Engine.
func New(opts Options) *Engine {
	e := &Engine{m: opts.Lifecycle, log: opts.Logger, onEvent: opts.OnEvent}
	if e.log == nil {
		e.log = hclog.NewNullLogger()
	}
	n := opts.MaxStarting
	if n <= 0 {
		n = DefaultMaxStarting
	}
	e.starting = make(chan struct{}, n)
	return e
}

// Pool is a profile and the VMs that run it, resolved to their drivers.
type Pool struct {
	Profile Profile
	VMs     []lifecycle.VM
}

// Job is one run: every sample analysed with every pool's profile.
type Job struct {
	Samples []Sample
	Pools   []Pool
	// OutDir receives one directory per sample, named after its SHA256,
	// holding report.json and the artifacts.
	OutDir string
}

// Summary is what a run did.
type Summary struct {
	// Reports has one report per sample, in the order of Job.Samples.
	Reports []*Report `json:"reports"`
	// Unusable names the VMs the run could not use or had to quarantine,
	// by VM name, with why.
	Unusable map[string]string `json:"unusable_vms,omitempty"`
	// Cancelled is set when the run was interrupted.
	Cancelled bool `json:"cancelled,omitempty"`
	// Duration is the run's wall time.
	Duration time.Duration `json:"duration_ns"`
}

// Failed counts the results that did not end done.
func (s *Summary) Failed() int {
	n := 0
	for _, r := range s.Reports {
		for _, res := range r.Results {
			if res.State != StepDone {
				n++
			}
		}
	}
	return n
}

// Capabilities a VM needs to run a profile.
func needed(p Profile) []hypervisor.Capability {
	caps := []hypervisor.Capability{hypervisor.CapRestore, hypervisor.CapGuestCopyIn, hypervisor.CapGuestExec}
	if len(p.Artifacts) > 0 {
		caps = append(caps, hypervisor.CapGuestCopyOut)
	}
	return caps
}

// Check verifies, before anything runs, that every VM's driver can do what
// its profile needs. It asks each driver once.
func (e *Engine) Check(ctx context.Context, pools []Pool) error {
	infos := map[hypervisor.Driver]hypervisor.Info{}
	for _, p := range pools {
		if len(p.VMs) == 0 {
			return fmt.Errorf("profile %s has no VM to run on", p.Profile.Name)
		}
		for _, vm := range p.VMs {
			info, ok := infos[vm.Driver]
			if !ok {
				var err error
				if info, err = vm.Driver.Info(ctx); err != nil {
					return fmt.Errorf("VM %s (plugin %s): %w", vm.Name, vm.Plugin, err)
				}
				infos[vm.Driver] = info
			}
			for _, c := range needed(p.Profile) {
				if !info.Capabilities.Has(c) {
					return fmt.Errorf("VM %s cannot run profile %s: its driver (plugin %s, %s %s) does not declare %s; "+
						"see `sandbox plugins` for what it can do", vm.Name, p.Profile.Name, vm.Plugin, info.Name, info.Version, c)
				}
			}
		}
	}
	return nil
}

// Run analyses every sample with every pool's profile and writes one
// report.json per sample. It returns when every task has ended: done,
// failed, or cancelled because ctx ended, in which case every VM that was
// in use has been cleaned first (each cleanup bounded by its VM's
// cleanup_timeout). The error is for what stops the run as a whole (the
// output directory, a driver that cannot run a profile); a task's failure
// is in its result.
func (e *Engine) Run(ctx context.Context, job Job) (*Summary, error) {
	begun := time.Now()
	if err := e.Check(ctx, job.Pools); err != nil {
		return nil, err
	}
	// The driver writes artifacts from another process, maybe in another
	// working directory.
	outDir, err := filepath.Abs(job.OutDir)
	if err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	q := newQueue(ctx)
	var samples []*sampleRun
	for _, s := range job.Samples {
		sr, err := e.newSampleRun(outDir, s, len(job.Pools))
		if err != nil {
			q.cancel()
			for _, done := range samples {
				done.root.Close()
			}
			return nil, err
		}
		samples = append(samples, sr)
		for i := range job.Pools {
			t := &task{sample: sr, pool: &job.Pools[i], idx: i,
				res: &Result{Profile: job.Pools[i].Profile.Name, Transitions: []Transition{}}}
			e.event(t, StepQueued, "")
			q.push(t)
		}
	}
	// One worker per VM, serving every pool the VM is in.
	var vms []lifecycle.VM
	pools := map[string][]*Pool{}
	for i := range job.Pools {
		p := &job.Pools[i]
		for _, vm := range p.VMs {
			if _, ok := pools[vm.Key()]; !ok {
				vms = append(vms, vm)
			}
			pools[vm.Key()] = append(pools[vm.Key()], p)
			q.serve(p.Profile.Name)
		}
	}
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Go(func() { e.worker(ctx, q, vm, pools[vm.Key()]) })
	}
	wg.Wait()
	q.cancel()

	// Tasks still pending never got a VM.
	for _, t := range q.pending {
		if ctx.Err() != nil {
			e.finish(t, StepCancelled, StepQueued, errors.New("the run was interrupted before a VM was free"))
		} else {
			e.finish(t, StepFailed, StepQueued, q.noVMError(t.res.Profile))
		}
	}
	sum := &Summary{Unusable: q.unusable, Cancelled: ctx.Err() != nil}
	var werr error
	for _, sr := range samples {
		if sr.err != nil && werr == nil {
			werr = sr.err
		}
		sum.Reports = append(sum.Reports, sr.report)
	}
	sum.Duration = time.Since(begun)
	return sum, werr
}

// worker runs tasks on one VM until no task is left for it, the run is
// cancelled, or the VM turns out unusable.
func (e *Engine) worker(ctx context.Context, q *queue, vm lifecycle.VM, pools []*Pool) {
	profiles := make([]string, len(pools))
	for i, p := range pools {
		profiles[i] = p.Profile.Name
	}
	defer q.leave(profiles)
	for q.hasWork(profiles) {
		lease, err := e.m.Lease(q.ctx, vm)
		if err != nil {
			if q.ctx.Err() == nil {
				q.drop(vm.Name, fmt.Sprintf("could not take its lease: %v", err))
			}
			return
		}
		t := q.take(profiles)
		if t == nil {
			lease.Release()
			return
		}
		unusable := e.runTask(ctx, lease, t)
		lease.Release()
		if unusable == "" {
			q.done()
			continue
		}
		q.drop(vm.Name, unusable)
		if t.res.State.Final() {
			q.done()
		} else {
			q.requeue(t)
		}
		return
	}
}

// queue is the run's pending tasks, taken in order by the VMs' workers.
type queue struct {
	// ctx ends when the run's does, or when no task is pending or
	// running: workers waiting for a lease then give up.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	pending  []*task
	running  int
	serving  map[string]int // profile -> workers that serve it
	unusable map[string]string
}

func newQueue(parent context.Context) *queue {
	ctx, cancel := context.WithCancel(parent)
	return &queue{ctx: ctx, cancel: cancel, serving: map[string]int{}, unusable: map[string]string{}}
}

func (q *queue) push(t *task) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, t)
}

func (q *queue) serve(profile string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.serving[profile]++
}

func (q *queue) hasWork(profiles []string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ctx.Err() == nil && slices.ContainsFunc(q.pending, func(t *task) bool {
		return slices.Contains(profiles, t.pool.Profile.Name)
	})
}

// take removes and returns the first pending task for one of profiles.
func (q *queue) take(profiles []string) *task {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ctx.Err() != nil {
		return nil
	}
	i := slices.IndexFunc(q.pending, func(t *task) bool { return slices.Contains(profiles, t.pool.Profile.Name) })
	if i < 0 {
		return nil
	}
	t := q.pending[i]
	q.pending = slices.Delete(q.pending, i, i+1)
	q.running++
	return t
}

// requeue puts a task that never ran back at the front.
func (q *queue) requeue(t *task) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = slices.Insert(q.pending, 0, t)
	q.running--
	q.idleLocked()
}

func (q *queue) done() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.running--
	q.idleLocked()
}

func (q *queue) idleLocked() {
	if len(q.pending) == 0 && q.running == 0 {
		q.cancel()
	}
}

// drop records that a VM is out of the run.
func (q *queue) drop(vm, why string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.unusable[vm] = why
}

// leave is a worker's exit: a profile nobody serves any more can run none
// of its pending tasks, and they stay pending for Run to fail.
func (q *queue) leave(profiles []string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, p := range profiles {
		q.serving[p]--
	}
	if !slices.ContainsFunc(q.pending, func(t *task) bool { return q.serving[t.pool.Profile.Name] > 0 }) && q.running == 0 {
		q.cancel()
	}
}

// noVMError says why a profile's task never ran.
func (q *queue) noVMError(profile string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.unusable) == 0 {
		return fmt.Errorf("no VM of profile %s was free", profile)
	}
	var names []string
	for vm, why := range q.unusable {
		names = append(names, fmt.Sprintf("%s (%s)", vm, why))
	}
	slices.Sort(names)
	return fmt.Errorf("no usable VM left for profile %s: %v", profile, names)
}

// sampleRun is one sample's part of a run: its report and its directory.
type sampleRun struct {
	sample Sample
	dir    string
	root   *os.Root
	report *Report
	mu     sync.Mutex
	// err is the first failure to write the report.
	err error
	// single marks the one task of Analyze, whose caller writes reports.
	single bool
}

func (e *Engine) newSampleRun(outDir string, s Sample, profiles int) (*sampleRun, error) {
	dir := filepath.Join(outDir, s.SHA256)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("output directory for %s: %w", s.Path, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("output directory for %s: %w", s.Path, err)
	}
	r := &Report{Schema: ReportSchema, Sample: s, Started: time.Now().UTC(), Results: make([]*Result, profiles)}
	for i := range r.Results {
		r.Results[i] = &Result{State: StepQueued}
	}
	return &sampleRun{sample: s, dir: dir, root: root, report: r}, nil
}

// complete writes the sample's report once every result is final.
func (e *Engine) complete(sr *sampleRun) error {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if sr.root == nil || sr.single {
		return nil
	}
	for _, r := range sr.report.Results {
		if !r.State.Final() {
			return nil
		}
	}
	sr.report.Verdict = Overall(sr.report.Results)
	sr.report.Finished = time.Now().UTC()
	err := sr.report.Write(sr.root)
	sr.root.Close()
	sr.root = nil
	if err != nil {
		return fmt.Errorf("report of %s: %w", sr.sample.Path, err)
	}
	return nil
}

// Analyze runs one task, the sample with the profile, on the VM the lease
// holds, and writes its artifacts under outDir/SHA256/PROFILE/. It is the
// unit of work of a service whose queue hands out tasks one at a time; it
// writes no report.json, whose results the caller gathers.
//
// It returns the task's result and, when the VM must leave service, why
// (it is quarantined, or could not be made ready). A result still in
// StepQueued never reached the VM and may run on another.
func (e *Engine) Analyze(ctx context.Context, lease *lifecycle.Lease, s Sample, p Profile, outDir string) (*Result, string, error) {
	outDir, err := filepath.Abs(outDir)
	if err != nil {
		return nil, "", fmt.Errorf("output directory: %w", err)
	}
	if err := e.Check(ctx, []Pool{{Profile: p, VMs: []lifecycle.VM{lease.VM()}}}); err != nil {
		return nil, "", err
	}
	sr, err := e.newSampleRun(outDir, s, 1)
	if err != nil {
		return nil, "", err
	}
	defer sr.root.Close()
	sr.single = true
	t := &task{sample: sr, pool: &Pool{Profile: p, VMs: []lifecycle.VM{lease.VM()}},
		res: &Result{Profile: p.Name, Transitions: []Transition{}}}
	e.event(t, StepQueued, "")
	unusable := e.runTask(ctx, lease, t)
	return t.res, unusable, nil
}
