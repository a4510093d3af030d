// Package lifecycle brings VMs to the states an analysis system needs (off,
// unlocked, restored, started) through any driver, fast and without fixed
// sleeps: stops escalate through a ladder of rungs (ACPI, power-off,
// emergency), each with its own deadline and confirmed by state; a session
// lock that outlives the VM is waited out or actively released; a restore
// is retried while the session is still held and verified afterwards.
//
// Where a driver lacks an operation the manager composes the outcome from
// what it has, down to the legacy protocol 1 contract (power-off, polling,
// a fixed settle delay), and says so in the report. A cleanup that fails
// quarantines the VM until a later cleanup succeeds. Operations on one VM
// are serialized; different VMs proceed in parallel.
package lifecycle

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// VM is a VM as the manager addresses it: its name, the plugin and driver
// that operate it, and its resolved settings.
type VM struct {
	// Name is the VM's name as its driver knows it.
	Name string
	// Plugin is the plugin's name, for logs, reports and keys.
	Plugin string
	// Driver operates the VM.
	Driver hypervisor.Driver
	// Settings are the VM's lifecycle settings.
	Settings config.Lifecycle
}

// Key identifies the VM across plugins: "plugin/name".
func (v VM) Key() string { return v.Plugin + "/" + v.Name }

// Leases serializes operations on a VM. The default keeps one lease per VM
// within the process; a shared implementation extends that across
// processes.
type Leases interface {
	// Acquire blocks until key is free or ctx ends, and returns the
	// function that frees it.
	Acquire(ctx context.Context, key string) (release func(), err error)
}

// Options configures a Manager.
type Options struct {
	// Logger receives one INFO line per step of every operation, tagged
	// with the VM and the plugin. Defaults to a discarding logger.
	Logger hclog.Logger
	// Quarantine remembers VMs whose cleanup failed. Defaults to an
	// in-memory one.
	Quarantine Quarantine
	// Leases serializes operations per VM. Defaults to in-process leases.
	Leases Leases
}

// Manager runs lifecycle operations. It is safe for concurrent use.
type Manager struct {
	log        hclog.Logger
	quarantine Quarantine
	leases     Leases

	mu           sync.Mutex
	settleLogged map[string]bool
}

// New returns a Manager.
func New(opts Options) *Manager {
	m := &Manager{log: opts.Logger, quarantine: opts.Quarantine, leases: opts.Leases, settleLogged: map[string]bool{}}
	if m.log == nil {
		m.log = hclog.NewNullLogger()
	}
	if m.quarantine == nil {
		m.quarantine = NewMemoryQuarantine()
	}
	if m.leases == nil {
		m.leases = NewLocalLeases()
	}
	return m
}

// Option adjusts one operation.
type Option func(*callOptions)

type callOptions struct {
	// held: the caller holds the VM's lease (a Lease's operations).
	held bool
	// left: the holder that died holding the lease the caller took.
	left     *LeaseHolder
	progress func(Progress)
	method   hypervisor.StopMethod
	snapshot *string
	restore  *bool
	// abandoned: a reconciliation touches only a VM whose lease holder died.
	abandoned bool
}

// WithProgress calls f as the operation moves: at each step and at each
// state seen. f runs on the operation's goroutine and must return quickly.
func WithProgress(f func(Progress)) Option {
	return func(o *callOptions) { o.progress = f }
}

// OnlyAbandoned makes Reconcile clean a VM only when a process died
// holding its lease, and leave any other alone, however it finds it, for
// the check its next user makes. It is what a service starting again owes
// the VMs its killed predecessor held: they are cleaned whether or not
// work comes to them, and a VM merely found running is not cleaned before
// a task is there to report it.
func OnlyAbandoned() Option {
	return func(o *callOptions) { o.abandoned = true }
}

// WithMethod makes Stop use only method m instead of the VM's ladder.
func WithMethod(m hypervisor.StopMethod) Option {
	return func(o *callOptions) { o.method = m }
}

// WithSnapshot makes Restore and Cleanup return to snapshot instead of the
// VM's configured one ("" is the current snapshot).
func WithSnapshot(snapshot string) Option {
	return func(o *callOptions) { o.snapshot = &snapshot }
}

// WithRestore overrides the VM's restore_on_cleanup setting for Cleanup.
func WithRestore(restore bool) Option {
	return func(o *callOptions) { o.restore = &restore }
}

// localLeases is one lock per key that a context can abandon, which
// sync.Mutex cannot.
type localLeases struct{ keys wait.Keyed[string] }

// NewLocalLeases returns leases that serialize operations within this
// process.
func NewLocalLeases() Leases {
	return &localLeases{}
}

func (l *localLeases) Acquire(ctx context.Context, key string) (func(), error) {
	return l.keys.Lock(ctx, key)
}

// op is one operation in progress on one VM.
type op struct {
	m        *Manager
	vm       VM
	opts     callOptions
	log      hclog.Logger
	caps     hypervisor.Capabilities
	report   *OpReport
	started  time.Time
	last     hypervisor.Status
	haveLast bool
	// begun is set once the lease is held and the VM's state is known: only
	// from then on can the operation have changed the VM.
	begun bool
	// stopSent is set once a stop reached the driver; the legacy settle
	// delay follows only a stop.
	stopSent bool
	// lastStatusErr is the last failed status read while waiting, for the
	// step that gives up to name.
	lastStatusErr error
}

// begin takes the VM's lease, learns the driver's capabilities and the
// VM's state, and logs the start. The caller must call finish.
func (m *Manager) begin(ctx context.Context, name string, vm VM, options []Option) (*op, func(), error) {
	o := &op{
		m:       m,
		vm:      vm,
		log:     m.log.With("vm", vm.Name, "plugin", vm.Plugin),
		report:  &OpReport{Operation: name, VM: vm.Name, Plugin: vm.Plugin, Steps: []OpStep{}},
		started: time.Now(),
	}
	for _, opt := range options {
		opt(&o.opts)
	}
	release := func() {}
	if !o.opts.held {
		o.progress("waiting for other operations on this VM")
		var err error
		if release, err = m.acquire(ctx, name, vm); err != nil {
			return o, func() {}, err
		}
	}
	o.started = time.Now()
	o.report.Started = o.started
	info, err := vm.Driver.Info(ctx)
	if err != nil {
		release()
		return o, func() {}, err
	}
	o.caps = info.Capabilities
	o.report.Path = PathComposed
	if !o.caps.Has(hypervisor.CapLockState) {
		o.report.Path = PathLegacy
	}
	o.log.Info(name+" started", "driver", info.Name, "capabilities", o.caps.String())
	st, err := o.status(ctx)
	if err != nil {
		release()
		return o, func() {}, err
	}
	o.report.Initial = &st
	o.begun = true
	o.log.Info("state found", "power", st.Power, "raw", st.Raw, "lock", st.Lock, "snapshot", st.CurrentSnapshot)
	return o, release, nil
}

// acquire takes the VM's lease for operation name, waiting within ctx.
func (m *Manager) acquire(ctx context.Context, name string, vm VM) (func(), error) {
	release, err := m.leases.Acquire(ctx, vm.Key())
	if err != nil {
		if cerr := hypervisor.FromContext(ctx, name, vm.Name); cerr != nil {
			return nil, &hypervisor.Error{Code: hypervisor.CodeOf(cerr), Op: name, VM: vm.Name,
				Message: "gave up waiting for another operation on this VM to finish", Err: cerr}
		}
		return nil, fmt.Errorf("%s %q: could not take the VM's lease: %w", name, vm.Name, err)
	}
	return release, nil
}

// finish records the outcome and the final state and logs the total.
func (o *op) finish(ctx context.Context, err error) (*OpReport, error) {
	o.refreshIfInterrupted(ctx)
	if o.haveLast {
		final := o.last
		o.report.Final = &final
	}
	o.report.Duration = time.Since(o.started)
	fields := []any{"took", o.report.Duration.Round(time.Millisecond), "path", o.report.Path, "status_calls", o.report.StatusCalls}
	if len(o.report.Fallbacks) > 0 {
		fields = append(fields, "fallbacks", o.report.Fallbacks)
	}
	if o.haveLast {
		fields = append(fields, "state", stateWord(o.last))
	}
	if err != nil {
		o.report.Error = err.Error()
		o.log.Error(o.report.Operation+" failed", append(fields, "error", err)...)
		return o.report, err
	}
	o.log.Info(o.report.Operation+" done", fields...)
	return o.report, nil
}

func (o *op) progress(step string) {
	if o.opts.progress == nil {
		return
	}
	p := Progress{VM: o.vm.Name, Step: step, Elapsed: time.Since(o.started)}
	if o.haveLast {
		p.State = o.last
	}
	o.opts.progress(p)
}

func (o *op) seen(st hypervisor.Status) {
	changed := !o.haveLast || st.Power != o.last.Power || st.Lock != o.last.Lock
	o.last, o.haveLast = st, true
	if changed && o.opts.progress != nil {
		o.opts.progress(Progress{VM: o.vm.Name, Step: "state " + stateWord(st), Elapsed: time.Since(o.started), State: st})
	}
}

// addStep records a finished step and logs it.
func (o *op) addStep(s OpStep) {
	if o.haveLast && s.State == "" {
		s.State = stateWord(o.last)
	}
	o.report.add(s)
	fields := []any{"outcome", s.Outcome, "took", s.Duration.Round(time.Millisecond)}
	if s.Attempts > 1 {
		fields = append(fields, "attempts", s.Attempts)
	}
	if s.State != "" {
		fields = append(fields, "state", s.State)
	}
	if s.Detail != "" {
		fields = append(fields, "detail", s.Detail)
	}
	o.log.Info(s.Name, fields...)
}

// fallback records that the core took another way than the driver's own.
func (o *op) fallback(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	o.report.fallback(msg)
	o.log.Info("fallback: " + msg)
}

func (o *op) settings() config.Lifecycle { return o.vm.Settings }
