package vboxmanage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/fault"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/runner"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// Exit statuses of `guestcontrol run` that are not a guest exit code
// (FACTS §6.2). Guest exit codes 1..93 come back as 33..125, 94 and above
// as 126.
const (
	runFailed      = 17
	runSignaled    = 18
	runAbnormal    = 19
	runTimedOut    = 20
	runDown        = 21
	runCanceled    = 22
	guestExitBase  = 32
	guestExitOver  = 126
	guestExitLimit = 94
)

// guestSession is what every guest operation needs: the VM's argument,
// the credentials and the password file passed with --passwordfile.
type guestSession struct {
	ref   string
	cred  *credentials
	close func()
	flags []string
}

// passwordFiles are the guest password files on disk. Close removes the
// ones whose operations did not get to remove them, and no new one is
// created after that.
type passwordFiles struct {
	mu     sync.Mutex
	closed bool
	m      map[string]struct{}
}

// errClosing refuses a password file to an operation racing Close.
var errClosing = errors.New("the driver is shutting down")

// create makes a new file in dir that only the plugin's user can read.
// Creating and registering it under one lock means that Close's sweep
// either sees it or refuses it.
func (f *passwordFiles) create(dir string) (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errClosing
	}
	file, err := os.CreateTemp(dir, "sandbox-vbox-pw-")
	if err != nil {
		return nil, err
	}
	if f.m == nil {
		f.m = map[string]struct{}{}
	}
	f.m[file.Name()] = struct{}{}
	return file, nil
}

// remove deletes one file.
func (f *passwordFiles) remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = os.Remove(name)
	delete(f.m, name)
}

// sweep deletes every file left and refuses new ones.
func (f *passwordFiles) sweep() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for name := range f.m {
		_ = os.Remove(name)
	}
	f.m = nil
}

// openGuest prepares a guest operation. The password goes into a file
// only the plugin's user can read, never on a command line (where `ps`
// shows it) and never into a log; the file is removed by close, or by
// Close if the plugin is stopped first.
func (d *Driver) openGuest(ctx context.Context, p *probe, op, vm string) (*guestSession, error) {
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return nil, err
	}
	cred, err := d.cfg.credentialsFor(vm)
	if err != nil {
		return nil, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "%s", err.Error())
	}
	f, err := d.passwords.create(d.cfg.TempDir)
	if errors.Is(err, errClosing) {
		return nil, shuttingDown(op, vm)
	}
	if err != nil {
		return nil, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "cannot write the guest password file: %v", err)
	}
	name := f.Name()
	rm := func() { d.passwords.remove(name) }
	if err := f.Chmod(0o600); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		f.Close()
		rm()
		return nil, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "cannot protect the guest password file: %v", err)
	}
	_, werr := f.WriteString(cred.password.value)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		rm()
		return nil, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "cannot write the guest password file: %v", werr)
	}
	flags := []string{"--username", cred.username, "--passwordfile", name}
	if cred.domain != "" {
		flags = append(flags, "--domain", cred.domain)
	}
	return &guestSession{ref: ref, cred: cred, close: rm, flags: flags}, nil
}

// notYetTexts are VirtualBox's words for a guest whose guest control is
// still starting (FACTS §6.1), decided one by one:
//
//   - "The guest execution service is not ready (yet)": the Guest
//     Additions' service has not started; it will.
//   - "Session is not in started state": the guest session VBoxManage
//     opened has not reached started yet.
//   - "Error starting guest session (current status is: starting)": the
//     session was still starting when VBoxManage stopped waiting for it.
//
// The other texts of a failed guest session are not "not yet", and fail
// the call at once: "The specified user was not able to logon on guest"
// (wrong credentials: waiting does not fix them), "Error starting guest
// session" with any other status (it ended, or failed), "Failed to get a
// IConsole pointer for the machine. Is it still running?" (the VM went
// away) and the syntax errors ("No user name specified!").
var notYetTexts = []string{
	"guest execution service is not ready",
	"session is not in started state",
	"error starting guest session (current status is: starting)",
}

// notReady reports whether err is one of VirtualBox's answers for a guest
// whose guest control is still starting, as it is while the guest boots.
func notReady(err error) bool {
	var e *hypervisor.Error
	if !errors.As(err, &e) {
		return false
	}
	msg := strings.ToLower(e.Message)
	for _, t := range notYetTexts {
		if strings.Contains(msg, t) {
			return true
		}
	}
	return false
}

// guestCall runs one guestcontrol command, retrying while the guest's
// execution service is not ready for up to the VM's guest.ready_wait.
func (d *Driver) guestCall(ctx context.Context, p *probe, op, vm string, g *guestSession, c runner.Call, decode func(*runner.Result, error) error) error {
	budget := g.cred.readyWait
	if budget <= 0 {
		budget = time.Nanosecond
	}
	return d.retryIf(ctx, op, vm, budget, notReady, func() error {
		res, err := p.run.Run(ctx, c)
		return decode(res, err)
	})
}

// CopyIn copies a host file into the running guest with `guestcontrol
// copyto` (§9.1).
func (d *Driver) CopyIn(ctx context.Context, vm, hostPath, guestPath string) (err error) {
	const op = hypervisor.OpCopyIn
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm, "host path %q: %v", hostPath, err)
	}
	if st, err := os.Stat(abs); err != nil || !st.Mode().IsRegular() {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm, "host file %q is not a readable regular file", hostPath)
	}
	return d.copy(ctx, op, vm, hypervisor.CapGuestCopyIn, "copyto", abs, guestPath, guestPath)
}

// CopyOut copies a guest file to the host with `guestcontrol copyfrom`
// (§9.3).
func (d *Driver) CopyOut(ctx context.Context, vm, guestPath, hostPath string) (err error) {
	const op = hypervisor.OpCopyOut
	abs, err := filepath.Abs(hostPath)
	if err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm, "host path %q: %v", hostPath, err)
	}
	if st, err := os.Stat(filepath.Dir(abs)); err != nil || !st.IsDir() {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm, "host directory of %q does not exist", hostPath)
	}
	// VBoxManage writes a part file beside the host file, watched: past
	// max_copy_out it is stopped (§9.5). The host file appears whole or
	// not at all.
	part := filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+".part-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	defer os.Remove(part)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var over atomic.Bool
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		_ = wait.Until(wctx, copyWatch, func(context.Context) (bool, error) {
			if fi, err := os.Stat(part); err == nil && fi.Size() > d.cfg.MaxCopyOut {
				over.Store(true)
				stop()
				return true, nil
			}
			return false, nil
		})
	}()
	err = d.copy(wctx, op, vm, hypervisor.CapGuestCopyOut, "copyfrom", guestPath, part, guestPath)
	stop()
	<-watched
	if fi, serr := os.Stat(part); over.Load() || (err == nil && serr == nil && fi.Size() > d.cfg.MaxCopyOut) {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm,
			"the guest file %s is larger than max_copy_out (%d bytes); nothing was copied", guestPath, d.cfg.MaxCopyOut)
	}
	if err != nil {
		return err
	}
	if err := os.Rename(part, abs); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm, "%v", err)
	}
	return nil
}

// copyWatch paces the looks at a copy-out's part file.
var copyWatch = wait.Policy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, Factor: 2}

// copy runs copyto/copyfrom in its two-argument form, which every
// supported version accepts. Host paths are absolute, so neither path can
// be read as an option unless the guest path itself starts with "-".
func (d *Driver) copy(ctx context.Context, op, vm string, capability hypervisor.Capability, sub, from, to, guestPath string) (err error) {
	if strings.HasPrefix(guestPath, "-") || guestPath == "" {
		return hypervisor.NewError(hypervisor.CodeFailed, op, vm, "guest path %q must be absolute", guestPath)
	}
	ctx, p, done, err := d.enter(ctx, op, vm, capability, false)
	if err != nil {
		return err
	}
	defer done(&err)
	g, err := d.openGuest(ctx, p, op, vm)
	if err != nil {
		return err
	}
	defer g.close()
	args := append(append([]string{"guestcontrol", g.ref, sub}, g.flags...), from, to)
	return d.guestCall(ctx, p, op, vm, g, runner.Call{Args: args, Timeout: d.cfg.Timeouts.Copy}, func(_ *runner.Result, err error) error {
		if err != nil {
			return d.failure(op, vm, err)
		}
		return nil
	})
}

// Exec runs a program in the running guest with `guestcontrol run` (§9.2)
// and decodes VBoxManage's exit status into the guest's exit code. The
// guest's output is returned as it came, up to max_output bytes per
// stream, or the request's MaxOutput when smaller (§9.5). req.Timeout goes to the guest as --timeout; VBoxManage itself
// gets timeouts.command on top of it to set up and tear down the guest
// session before it is killed.
func (d *Driver) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (_ hypervisor.ExecResult, err error) {
	const op = hypervisor.OpExec
	if req.Path == "" || strings.HasPrefix(req.Path, "-") {
		return hypervisor.ExecResult{}, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "program path %q must be a path", req.Path)
	}
	ctx, p, done, err := d.enter(ctx, op, vm, hypervisor.CapGuestExec, false)
	if err != nil {
		return hypervisor.ExecResult{}, err
	}
	defer done(&err)
	g, err := d.openGuest(ctx, p, op, vm)
	if err != nil {
		return hypervisor.ExecResult{}, err
	}
	defer g.close()

	args := append([]string{"guestcontrol", g.ref, "run"}, g.flags...)
	args = append(args, "--exe", req.Path)
	call := runner.Call{Raw: true, MaxOutput: int(req.Limit(int64(d.cfg.MaxOutput)))}
	if req.Timeout > 0 {
		ms := max(req.Timeout.Milliseconds(), 1)
		args = append(args, "--timeout", strconv.FormatInt(ms, 10))
		call.Timeout = req.Timeout + d.cfg.Timeouts.Command
	}
	call.Args = append(append(args, "--", req.Path), req.Args...)

	var out hypervisor.ExecResult
	err = d.guestCall(ctx, p, op, vm, g, call, func(res *runner.Result, err error) error {
		var ee *runner.ExitError
		if err != nil && !errors.As(err, &ee) {
			return d.failure(op, vm, err)
		}
		code, gerr := d.guestExit(op, vm, res, req.Timeout)
		if gerr != nil {
			return gerr
		}
		out = hypervisor.ExecResult{ExitCode: code, Stdout: res.Stdout, Stderr: res.Stderr,
			StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated}
		return nil
	})
	return out, err
}

// guestExit decodes guestcontrol run's exit status.
func (d *Driver) guestExit(op, vm string, res *runner.Result, timeout time.Duration) (int, error) {
	rc := res.ExitCode
	switch {
	case rc == 0:
		return 0, nil
	case rc > guestExitBase && rc < guestExitOver:
		return rc - guestExitBase, nil
	case rc == guestExitOver:
		// The guest exited with 94 or more; VBoxManage does not say which.
		return guestExitOver, nil
	case rc == runTimedOut:
		return 0, hypervisor.NewError(hypervisor.CodeTimeout, op, vm, "the guest program was still running after %s and was killed", timeout)
	case rc == runSignaled:
		return 0, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "the guest program was terminated by a signal")
	case rc == runAbnormal:
		return 0, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "the guest program terminated abnormally")
	case rc == runDown:
		return 0, hypervisor.NewError(hypervisor.CodeInvalidState, op, vm, "the guest is shutting down")
	case rc == runCanceled:
		return 0, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "the guest program was canceled")
	case rc == runFailed:
		return 0, hypervisor.NewError(hypervisor.CodeFailed, op, vm, "the guest program failed to run")
	}
	// VBoxManage's own failure (1, or 2 for a usage error): only its
	// "error:" lines count, the rest of stderr may be the guest's.
	diag := fault.Classify("", strings.Join(errorLinesOnly(string(res.Stderr)), "\n"), rc)
	msg := diag.Message
	if msg == "" {
		msg = fmt.Sprintf("VBoxManage exited with status %d", rc)
	}
	return 0, &hypervisor.Error{Code: diag.Code, Op: op, VM: vm, Message: msg}
}

// errorLinesOnly keeps VBoxManage's error lines of a raw stderr.
func errorLinesOnly(stderr string) []string {
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(stderr, "\r\n", "\n"), "\n") {
		if fault.HasError(l) {
			out = append(out, l)
		}
	}
	return out
}
