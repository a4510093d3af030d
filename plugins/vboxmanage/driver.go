// Package vboxmanage is the sandbox driver for Oracle VirtualBox 5.x, 6.x
// and 7.x, driving VirtualBox through its VBoxManage command line on
// Linux, macOS and Windows hosts.
//
// Every operation is one or a few VBoxManage invocations, run without a
// shell, each with a deadline that kills it. VBoxManage's error texts are
// classified into the contract's codes; the session-lock refusals that
// VirtualBox users know ("already locked for a session (or being
// unlocked)", "The object is not ready") are retried with backoff for a
// bounded time, so that the lock a powering-off VM process leaves behind
// for a few seconds never reaches the operator. The driver serializes its
// own calls per VM so that it never collides with itself, and Status
// reads the state and the session from `list --long vms`, which takes no
// session lock, where showvminfo would lock a stopped VM.
package vboxmanage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/fault"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/fresh"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/location"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/parser"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/runner"
	"github.com/sandboxhq/sandbox/sdk"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Name is the driver's name in Info and logs.
const Name = "vboxmanage"

// Version is the driver's own version.
const Version = "0.1.0"

// Driver implements hypervisor.Driver with VBoxManage. Create it with New;
// Close ends it.
type Driver struct {
	// Unimplemented answers Watch: VBoxManage offers no state-change
	// events to stream.
	hypervisor.Unimplemented

	cfg       *settings
	log       hclog.Logger
	host      location.Host
	gates     gates
	restored  restoreMarks
	refused   refusals
	passwords passwordFiles
	// listing shares `list --long vms` among concurrent status reads.
	listing fresh.Reader[*runner.Result]

	// root is the context every invocation derives from; Close cancels it,
	// so that the runner kills whatever VBoxManage is still running.
	root   context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	probe   *probe
	probing *probing
	// active counts operations and probes in flight; drained is closed
	// when it reaches zero after Close began.
	active  int
	drained chan struct{}
	closing bool
	closed  chan struct{}
}

var _ hypervisor.Driver = (*Driver)(nil)

// closeWait is how long Close waits for the operations it canceled to
// return, having killed their VBoxManage processes: a few milliseconds on
// an idle machine, more on a busy one. The SDK gives Close five seconds
// when the host dies.
const closeWait = time.Second

// probe is what the driver learned about the installed VirtualBox; it is
// kept once VBoxManage answered.
type probe struct {
	run     *runner.Runner
	version parser.Version
	caps    hypervisor.Capabilities
}

// probing is one probe of VBoxManage in flight, shared by every call that
// needs its answer meanwhile. Each caller waits for it within its own
// deadline; the probe is canceled when the last of them gives up, so that
// no VBoxManage runs on behalf of nobody.
type probing struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiters int
	// p or err is the answer, set before done is closed.
	p   *probe
	err *hypervisor.Error
}

// New is the plugin's sdk.Factory. It validates the configuration; a
// missing VBoxManage is not an error here but CodeUnavailable from every
// operation, so that the host can report it like any other outage.
func New(cfg sdk.Config, logger hclog.Logger) (hypervisor.Driver, error) {
	return newDriver(cfg, logger, location.Local())
}

func newDriver(cfg sdk.Config, logger hclog.Logger, host location.Host) (*Driver, error) {
	s, err := load(cfg)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	root, cancel := context.WithCancel(context.Background())
	return &Driver{cfg: s, log: logger, host: host, root: root, cancel: cancel}, nil
}

// Invocations returns how many VBoxManage processes the driver has
// started, for the efficiency figures in tests and benchmarks.
func (d *Driver) Invocations() uint64 {
	d.mu.Lock()
	p := d.probe
	d.mu.Unlock()
	if p == nil {
		return 0
	}
	return p.run.Invocations()
}

// ready returns the probe, finding VBoxManage and reading its version on
// first use. Calls that arrive while a probe runs wait for that one, each
// within its own deadline. A failure is not kept: installing VirtualBox or
// starting its service fixes the next call without restarting the plugin.
func (d *Driver) ready(ctx context.Context, op, vm string) (*probe, error) {
	d.mu.Lock()
	if d.probe != nil {
		p := d.probe
		d.mu.Unlock()
		return p, nil
	}
	f := d.probing
	if f == nil {
		pctx, cancel := context.WithCancel(d.root)
		f = &probing{done: make(chan struct{}), cancel: cancel}
		d.probing = f
		d.active++
		go d.runProbe(pctx, f)
	}
	f.waiters++
	d.mu.Unlock()

	select {
	case <-f.done:
		if f.p != nil {
			return f.p, nil
		}
		e := *f.err
		e.Op, e.VM = op, vm
		return nil, &e
	case <-ctx.Done():
		d.mu.Lock()
		f.waiters--
		if f.waiters == 0 && d.probing == f {
			d.probing = nil
			f.cancel()
		}
		d.mu.Unlock()
		return nil, hypervisor.FromContext(ctx, op, vm)
	}
}

// runProbe runs one probe and hands its answer to whoever waits for it.
func (d *Driver) runProbe(ctx context.Context, f *probing) {
	defer d.leave()
	defer f.cancel()
	p, err := d.probeVBoxManage(ctx)
	d.mu.Lock()
	if p != nil {
		d.probe = p
	}
	if d.probing == f {
		d.probing = nil
	}
	f.p, f.err = p, err
	d.mu.Unlock()
	close(f.done)
}

// probeVBoxManage finds VBoxManage and reads its version. Its errors name
// no operation; each waiting caller adds its own.
func (d *Driver) probeVBoxManage(ctx context.Context) (*probe, *hypervisor.Error) {
	path, err := location.Find(d.cfg.Path, d.host)
	if err != nil {
		return nil, &hypervisor.Error{Code: hypervisor.CodeUnavailable, Message: err.Error(), Err: err}
	}
	var env []string
	if d.cfg.UserHome != "" {
		env = append(env, "VBOX_USER_HOME="+d.cfg.UserHome)
	}
	r := runner.New(runner.Options{Path: path, Env: env, Drop: d.cfg.passwordEnvs(), Logger: d.log.Named("vboxmanage")})
	// VBoxManage has been seen to print an empty line on Windows; asking
	// again helps, twice.
	var (
		found    *probe
		attempts int
	)
	_, err = wait.Retry(ctx, d.policy(), func(err error) bool { return errors.Is(err, errNoVersion) && attempts < 3 },
		func(ctx context.Context) error {
			attempts++
			res, err := r.Run(ctx, runner.Call{Args: []string{"--version"}, Timeout: d.cfg.Timeouts.Command})
			if err != nil {
				if ctx.Err() != nil {
					return &hypervisor.Error{Code: hypervisor.CodeUnavailable, Message: "the probe of VBoxManage was canceled", Err: err}
				}
				e := d.failure("", "", err)
				e.Code = hypervisor.CodeUnavailable
				e.Message = fmt.Sprintf("VBoxManage at %s does not work: %s", path, e.Message)
				return e
			}
			v, perr := parser.ParseVersion(res.Stdout)
			if perr != nil {
				return &hypervisor.Error{Code: hypervisor.CodeUnavailable, Err: errNoVersion,
					Message: fmt.Sprintf("VBoxManage at %s printed no version (%q)", path, firstLine(string(res.Stdout)))}
			}
			caps := capabilitiesFor(v, d.cfg.hasGuestCredentials())
			d.log.Info("found VirtualBox", "path", path, "version", v.Raw, "capabilities", caps.String())
			if v.Major < 5 {
				d.log.Warn("VirtualBox before 5.0 is supported only for status, start, stop and restore", "version", v.Raw)
			}
			found = &probe{run: r, version: v, caps: caps}
			return nil
		})
	if found != nil {
		return found, nil
	}
	var he *hypervisor.Error
	if errors.As(err, &he) && ctx.Err() == nil {
		return nil, he
	}
	return nil, &hypervisor.Error{Code: hypervisor.CodeUnavailable, Message: "the probe of VBoxManage was canceled", Err: err}
}

// errNoVersion: VBoxManage --version printed no version.
var errNoVersion = errors.New("no version printed")

// begin admits one operation. The context it returns ends with the
// caller's or when the driver closes; end, deferred with the operation's
// error, reports an operation cut short by Close as the driver shutting
// down rather than as whatever the killed VBoxManage left behind.
func (d *Driver) begin(ctx context.Context, op, vm string) (context.Context, func(*error), error) {
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return nil, nil, shuttingDown(op, vm)
	}
	d.active++
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.root, cancel)
	return ctx, func(errp *error) {
		stop()
		cancel()
		if *errp != nil && d.root.Err() != nil {
			*errp = shuttingDown(op, vm)
		}
		d.leave()
	}, nil
}

// enter starts operation op on vm the way every VM operation starts: it
// is counted (so Close can drain it), the VirtualBox version is known, the
// capability need (if any) is declared, and the VM's gate is held,
// exclusively or shared. The caller defers done(&err).
func (d *Driver) enter(ctx context.Context, op, vm string, need hypervisor.Capability, exclusive bool) (
	_ context.Context, _ *probe, done func(*error), err error) {
	ctx, end, err := d.begin(ctx, op, vm)
	if err != nil {
		return nil, nil, nil, err
	}
	p, err := d.ready(ctx, op, vm)
	if err == nil && need != "" && !p.caps.Has(need) {
		e := hypervisor.Unsupported(op, vm)
		if op == hypervisor.OpStop {
			e.Message = fmt.Sprintf("stop method needs %s", need)
		}
		err = e
	}
	var release func()
	if err == nil {
		release, err = d.lock(ctx, op, vm, exclusive)
	}
	if err != nil {
		end(&err)
		return nil, nil, nil, err
	}
	return ctx, p, func(errp *error) {
		if exclusive {
			d.refused.note(vm, *errp)
		}
		release()
		end(errp)
	}, nil
}

// leave ends what begin or a probe counted.
func (d *Driver) leave() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.active--
	if d.active == 0 && d.drained != nil {
		close(d.drained)
		d.drained = nil
	}
}

func shuttingDown(op, vm string) error {
	return hypervisor.NewError(hypervisor.CodeUnavailable, op, vm, "the driver is shutting down")
}

// Close ends the driver: operations in flight are canceled, which kills
// the VBoxManage processes they run, and every later operation answers
// unavailable. The plugin's server calls it when the host goes away, with
// little time to spare, so it waits only briefly for the canceled
// operations and then removes any guest password file still on disk
// itself. It is safe to call more than once and concurrently with
// operations.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closing {
		closed := d.closed
		d.mu.Unlock()
		<-closed
		return nil
	}
	d.closing = true
	d.closed = make(chan struct{})
	var drained chan struct{}
	if d.active > 0 {
		d.drained = make(chan struct{})
		drained = d.drained
	}
	d.mu.Unlock()

	d.cancel()
	if drained != nil {
		t := time.NewTimer(closeWait)
		// Nothing is logged here: when the host has died, a line written
		// to its log pipe could be the plugin's last act.
		select {
		case <-drained:
		case <-t.C:
		}
		t.Stop()
	}
	d.passwords.sweep()
	close(d.closed)
	return nil
}

// Info reports the driver and the VirtualBox it found (§1).
func (d *Driver) Info(ctx context.Context) (_ hypervisor.Info, err error) {
	ctx, end, err := d.begin(ctx, hypervisor.OpInfo, "")
	if err != nil {
		return hypervisor.Info{}, err
	}
	defer end(&err)
	p, err := d.ready(ctx, hypervisor.OpInfo, "")
	if err != nil {
		return hypervisor.Info{}, err
	}
	return hypervisor.Info{
		Name:            Name,
		Version:         Version,
		ContractVersion: hypervisor.ContractVersion,
		Hypervisor:      "VirtualBox " + p.version.Raw,
		Capabilities:    p.caps,
	}, nil
}

// ListVMs lists registered VMs with `list vms`, which takes no session
// lock (§2). VMs whose settings VirtualBox cannot read are left out: no
// operation could address them. Power stays unknown: the listing does not
// say, and asking would lock stopped VMs.
func (d *Driver) ListVMs(ctx context.Context) (_ []hypervisor.VM, err error) {
	ctx, end, err := d.begin(ctx, hypervisor.OpList, "")
	if err != nil {
		return nil, err
	}
	defer end(&err)
	p, err := d.ready(ctx, hypervisor.OpList, "")
	if err != nil {
		return nil, err
	}
	// The long listing costs the same one invocation as `list vms`, takes no
	// lock either, and carries each VM's state.
	var entries []parser.LongEntry
	err = d.retry(ctx, hypervisor.OpList, "", 0, func() error {
		res, err := d.run(ctx, p, hypervisor.OpList, "", runner.Call{Args: []string{"list", "--long", "vms"}, Timeout: d.cfg.Timeouts.Command})
		if err != nil {
			return err
		}
		entries = parser.ParseLongList(res.Stdout)
		if len(entries) == 0 && hasContent(res.Stdout) {
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpList, "",
				"VBoxManage printed no VM details: %s", excerpt(res.Stdout))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	vms := make([]hypervisor.VM, 0, len(entries))
	for _, e := range entries {
		if e.Inaccessible {
			d.log.Debug("skipping inaccessible VM", "uuid", e.UUID)
			continue
		}
		vms = append(vms, hypervisor.VM{Name: e.Name, ID: e.UUID, Power: statusFrom(e.Name, e, false).Power})
	}
	return vms, nil
}

// list runs `list <what>`, retrying a VBoxSVC that is still starting.
func (d *Driver) list(ctx context.Context, p *probe, op, vm, what string) ([]parser.Entry, error) {
	var entries []parser.Entry
	err := d.retry(ctx, op, vm, 0, func() error {
		res, err := d.run(ctx, p, op, vm, runner.Call{Args: []string{"list", what}, Timeout: d.cfg.Timeouts.Command})
		if err != nil {
			return err
		}
		entries = parser.ParseList(res.Stdout)
		return nil
	})
	return entries, err
}

// lock takes vm's gate for one operation.
func (d *Driver) lock(ctx context.Context, op, vm string, exclusive bool) (func(), error) {
	release, err := d.gates.get(vm).acquire(ctx, exclusive)
	if err != nil {
		return nil, hypervisor.FromContext(ctx, op, vm)
	}
	return release, nil
}

// ref is the argument that names vm to VBoxManage. A name that begins
// with "-" would be read as an option, so such a VM is addressed by its
// UUID, found with the lock-free `list vms`.
func (d *Driver) ref(ctx context.Context, p *probe, op, vm string) (string, error) {
	if vm == "" {
		return "", hypervisor.NewError(hypervisor.CodeNotFound, op, vm, "no VM name given")
	}
	if !strings.HasPrefix(vm, "-") {
		return vm, nil
	}
	entries, err := d.list(ctx, p, op, vm, "vms")
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.Name == vm {
			return e.UUID, nil
		}
	}
	return "", hypervisor.NewError(hypervisor.CodeNotFound, op, vm, "Could not find a registered machine named '%s'", vm)
}

// run is one invocation with its failure turned into a contract error.
func (d *Driver) run(ctx context.Context, p *probe, op, vm string, c runner.Call) (*runner.Result, error) {
	res, err := p.run.Run(ctx, c)
	if err != nil {
		return res, d.failure(op, vm, err)
	}
	return res, nil
}

// failure turns a runner error into a contract error, keeping VBoxManage's
// first message line for the operator.
func (d *Driver) failure(op, vm string, err error) *hypervisor.Error {
	var (
		ee *runner.ExitError
		te *runner.TimeoutError
		se *runner.StartError
	)
	switch {
	case errors.As(err, &ee):
		r := ee.Result
		diag := fault.Classify(string(r.Stdout), string(r.Stderr), r.ExitCode)
		msg := diag.Message
		if msg == "" {
			msg = fmt.Sprintf("VBoxManage exited with status %d", r.ExitCode)
		}
		return &hypervisor.Error{Code: diag.Code, Op: op, VM: vm, Message: msg, Err: err}
	case errors.As(err, &te):
		return &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: op, VM: vm, Message: te.Error(), Err: err}
	case errors.As(err, &se):
		return &hypervisor.Error{Code: hypervisor.CodeUnavailable, Op: op, VM: vm, Message: se.Error(), Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: op, VM: vm, Err: err}
	}
	return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm, Err: err}
}

// retry runs try again while it fails in a way that passes by itself: a
// session lock (CodeLocked) for up to budget (zero: the configured
// retry.locked), or a VBoxSVC that is still starting (CodeUnavailable
// reported by VBoxManage itself) twice. It stops early rather than run
// into ctx's deadline, and returns the last error.
func (d *Driver) retry(ctx context.Context, op, vm string, budget time.Duration, try func() error) error {
	return d.retryIf(ctx, op, vm, budget, func(error) bool { return false }, try)
}

// retryIf is retry with one more transient condition.
func (d *Driver) retryIf(ctx context.Context, op, vm string, budget time.Duration, also func(error) bool, try func() error) error {
	if budget <= 0 {
		budget = d.cfg.Retry.Locked
	}
	// The budget bounds the waiting, not a try: each runs with ctx.
	rctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	unavailable := 0
	_, err := wait.Retry(rctx, d.policy(), func(err error) bool {
		code := hypervisor.CodeOf(err)
		var ee *runner.ExitError
		switch {
		case code == hypervisor.CodeLocked, also(err):
		case code == hypervisor.CodeUnavailable && errors.As(err, &ee) && unavailable < 2:
			unavailable++
		default:
			return false
		}
		d.log.Debug("retrying", "op", op, "vm", vm, "error", err)
		return true
	}, func(context.Context) error { return try() })
	return err
}

// policy paces retries and polls: from retry.initial, doubling up to
// retry.max, with ±20 % jitter so that several drivers polling one host do
// not fall into step.
func (d *Driver) policy() wait.Policy {
	return wait.Policy{Initial: d.cfg.Retry.Initial, Max: d.cfg.Retry.Max, Factor: 2, Jitter: 0.2}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
