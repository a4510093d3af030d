// Package engine runs analysis tasks on VMs: each (sample, profile) task
// on a VM of the profile, through a step machine (queued, preparing,
// restoring, starting, waiting-guest, copying, analyzing, collecting,
// cleaning, done or failed) recorded with a time per transition.
//
// It is the one runner behind both front doors: `sandbox run` hands a Pool
// an in-memory list of tasks (RunBatch), and `sandbox serve`'s queue hands
// it one job at a time (Pool.Run). The Pool is the one scheduler: it hands
// out VMs under exclusive leases, so a VM never runs two tasks at once, in
// this process or another, and decides what makes a VM unusable and when
// a task moves to another VM. Whatever fails, and on cancellation, a VM a
// task used is cleaned (off, unlocked, restored) or quarantined with the
// reason, and a cleanup failure never erases an analysis result.
//
// The engine works on hypervisor.Driver values through the lifecycle
// manager; it never knows a concrete driver. It publishes every transition
// once, on an Events stream that every observer reads.
package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// Options configures an Engine.
type Options struct {
	// Lifecycle performs every VM operation and holds the leases. Required.
	Lifecycle *lifecycle.Manager
	// Logger gets a line per task transition. Defaults to discarding.
	Logger hclog.Logger
	// MaxStarting caps the VMs starting at once; 0 means
	// config.DefaultMaxStarting.
	MaxStarting int
	// Events receives every transition of every task; nil discards them.
	Events *Events
}

// Engine runs analyses. It is safe for concurrent use; the start cap is
// shared by every task of one Engine.
type Engine struct {
	m        *lifecycle.Manager
	log      hclog.Logger
	starting chan struct{}
	events   *Events
}

// New returns an Engine.
func New(opts Options) *Engine {
	e := &Engine{m: opts.Lifecycle, log: opts.Logger, events: opts.Events}
	if e.log == nil {
		e.log = hclog.NewNullLogger()
	}
	n := opts.MaxStarting
	if n <= 0 {
		n = config.DefaultMaxStarting
	}
	e.starting = make(chan struct{}, n)
	return e
}

// Events is the stream the engine publishes on (nil if none).
func (e *Engine) Events() *Events { return e.events }

// Task is one analysis: a sample with a profile.
type Task struct {
	// ID names the task in events and logs.
	ID string
	// Sample is the file to analyse; its Path must be absolute, since the
	// driver reads it from another process.
	Sample Sample
	// Profile is the analysis.
	Profile config.Profile
	// VM, when set, pins the task to this VM of the profile.
	VM string
	// Dir is where the task's artifacts go, under PROFILE/artifacts;
	// absolute, since the driver writes there from another process.
	Dir string
}

// VMState says whether a VM can take another task after one ran on it.
type VMState string

// The VM states of an Outcome.
const (
	// VMUsable: the VM is clean and may take the next task.
	VMUsable VMState = "usable"
	// VMUnusable: the VM could not be used (made ready, leased) but was
	// not quarantined; it leaves service until someone puts it back.
	VMUnusable VMState = "unusable"
	// VMQuarantined: the VM is quarantined and stays out of every
	// process's service until a successful cleanup lifts it.
	VMQuarantined VMState = "quarantined"
)

// Outcome is what a task left its VM as.
type Outcome struct {
	State VMState
	// Reason says why a VM is unusable or quarantined.
	Reason string
}

// Usable reports whether the VM may take the next task.
func (o Outcome) Usable() bool { return o.State == VMUsable || o.State == "" }

func (o Outcome) String() string {
	if o.Usable() {
		return string(VMUsable)
	}
	return fmt.Sprintf("%s: %s", o.State, o.Reason)
}

// Analyze runs one task on the VM the lease holds and returns its result
// and what it left the VM as. A result still in StepQueued never reached
// the VM (it could not be made ready) and may run on another VM; any
// other result is the task's end: done, failed or cancelled (ctx ended),
// the VM cleaned or quarantined in every case.
//
// Analyze writes no report; the pool that leased the VM has checked the
// driver's capabilities once, so Analyze asks no driver what it can do.
func (e *Engine) Analyze(ctx context.Context, lease *lifecycle.Lease, t Task) (*Result, Outcome) {
	r := newResult(t)
	out := e.runTask(ctx, lease, t, r)
	return r, out
}

// newResult is the result of a task about to begin, filled in as it goes.
func newResult(t Task) *Result {
	return &Result{Profile: t.Profile.Name, Transitions: []Transition{}}
}

// transition records that the task entered step, on its result and as an
// event.
func (e *Engine) transition(t Task, r *Result, step Step, detail string) {
	e.transitionAt(t, r, step, time.Now().UTC(), detail)
}

func (e *Engine) transitionAt(t Task, r *Result, step Step, at time.Time, detail string) {
	ev := Event{Task: t.ID, Sample: t.Sample.Name, SHA256: t.Sample.SHA256, Profile: t.Profile.Name, VM: r.VM,
		Step: step, At: at, Detail: detail}
	if n := len(r.Transitions); n > 0 {
		prev := r.Transitions[n-1]
		ev.Previous, ev.Took = prev.Step, at.Sub(prev.At)
	}
	r.State = step
	r.Transitions = append(r.Transitions, Transition{Step: step, At: at, Detail: detail})
	fields := []any{"task", t.ID, "sample", t.Sample.Name, "profile", t.Profile.Name}
	if r.VM != "" {
		fields = append(fields, "vm", r.VM)
	}
	if detail != "" {
		fields = append(fields, "detail", detail)
	}
	e.log.Info(string(step), fields...)
	e.events.Publish(ev)
}

// finish ends a task: its state, the step that failed and why.
func (e *Engine) finish(t Task, r *Result, state, failed Step, err error) {
	if state != StepDone {
		r.FailedStep = failed
		if err != nil {
			r.Error = err.Error()
		}
	}
	switch {
	case state == StepCancelled:
		// A cancelled analysis has no verdict of its own, whatever its
		// command had answered: nobody asked for it any more.
		r.Verdict, r.Rule = "", ""
	case r.Verdict == "":
		r.Verdict = VerdictError
	}
	e.transition(t, r, state, r.Error)
}
