// Package runner executes VBoxManage: one process per call, never through a
// shell, with a deadline that kills it, bounded output and a count of every
// invocation. Each VBoxManage gets the environment it needs and nothing
// else of the plugin's (never the guest password's variable), and dies
// with the plugin however the plugin dies (Pdeathsig on Linux, a job
// object on Windows, the host killing the plugin's process group
// elsewhere).
//
// Arguments are passed as a list, so a VM named `a "b"; rm -rf /` is one
// argument and nothing else. Output is captured up to a bound, with CRLF
// line ends turned into LF unless the caller wants the bytes raw (guest
// program output). A call fails when VBoxManage exits non-zero or, because
// it sometimes exits 0 after a fatal error, when its stderr holds an
// "error:" line.
package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/fault"
)

// Default output bounds: VBoxManage's own output is small, but a listing of
// many VMs or a guest program's output is not.
const (
	// DefaultMaxStdout bounds captured stdout.
	DefaultMaxStdout = 16 << 20
	// DefaultMaxStderr bounds captured stderr.
	DefaultMaxStderr = 1 << 20
)

// waitDelay bounds how long Wait keeps reading the pipes of a killed
// VBoxManage when a process it started still holds them.
const waitDelay = 2 * time.Second

// Options configures a Runner.
type Options struct {
	// Path is the VBoxManage executable.
	Path string
	// Env is added to the environment of every call (for example
	// VBOX_USER_HOME). Of the plugin's own environment VBoxManage gets
	// only what it needs (allowedEnv); LC_ALL=C is always set so that
	// messages are the English texts classification matches.
	Env []string
	// Drop names variables that must never reach VBoxManage, whatever the
	// allow-list says: the guest password's.
	Drop []string
	// MaxStdout and MaxStderr bound captured output; zero means the
	// defaults.
	MaxStdout, MaxStderr int
	// Logger receives one debug line per call; never the output.
	Logger hclog.Logger
}

// Runner runs VBoxManage. It is safe for concurrent use.
type Runner struct {
	opts  Options
	env   []string
	calls atomic.Uint64
	kin   kin
}

// New returns a Runner.
func New(o Options) *Runner {
	if o.MaxStdout <= 0 {
		o.MaxStdout = DefaultMaxStdout
	}
	if o.MaxStderr <= 0 {
		o.MaxStderr = DefaultMaxStderr
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	return &Runner{opts: o, env: environ(os.Environ(), o.Env, o.Drop)}
}

// environ returns what of base VBoxManage needs (allowed), with extra and
// then LC_ALL=C applied, each replacing an earlier entry of the same name
// (no setting may switch VBoxManage to messages that classification
// cannot read), and without any variable named in drop.
func environ(base, extra, drop []string) []string {
	set := append(append([]string{}, extra...), "LC_ALL=C")
	skip := map[string]bool{}
	for _, name := range drop {
		skip[envKey(name)] = true
	}
	replaced := map[string]bool{}
	for _, kv := range set {
		if k, _, ok := strings.Cut(kv, "="); ok {
			replaced[envKey(k)] = true
		}
	}
	out := make([]string, 0, len(base)+len(set))
	for _, kv := range base {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || replaced[envKey(k)] || skip[envKey(k)] || !allowed(k) {
			continue
		}
		out = append(out, kv)
	}
	for _, kv := range set {
		if k, _, ok := strings.Cut(kv, "="); ok && skip[envKey(k)] {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// allowed reports whether VBoxManage gets the plugin's variable name:
// VirtualBox's own (VBOX_*), and what any program needs to find its
// libraries, its user and a temporary directory on each host OS.
func allowed(name string) bool {
	k := envKey(name)
	if strings.HasPrefix(strings.ToUpper(k), "VBOX_") {
		return true
	}
	for _, a := range allowedEnv {
		if envKey(a) == k {
			return true
		}
	}
	return false
}

// allowedEnv lists the variables, besides VBOX_*, that VBoxManage gets.
var allowedEnv = []string{
	"PATH", "HOME", "USER", "LOGNAME", "TMPDIR",
	// Windows: COM and the VirtualBox installation need these.
	"SYSTEMROOT", "SYSTEMDRIVE", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "USERPROFILE", "USERNAME",
	"USERDOMAIN", "HOMEDRIVE", "HOMEPATH", "APPDATA", "LOCALAPPDATA", "PROGRAMDATA", "PROGRAMFILES",
	"PROGRAMFILES(X86)", "PROGRAMW6432", "COMMONPROGRAMFILES", "COMMONPROGRAMFILES(X86)",
}

// Path returns the executable the runner starts.
func (r *Runner) Path() string { return r.opts.Path }

// Invocations returns how many VBoxManage processes this runner started
// (or tried to).
func (r *Runner) Invocations() uint64 { return r.calls.Load() }

// Call is one invocation.
type Call struct {
	// Args are VBoxManage's arguments, program name excluded.
	Args []string
	// Timeout kills the process when it passes; zero leaves only ctx.
	Timeout time.Duration
	// Raw keeps output bytes as printed and does not treat stderr
	// "error:" lines as failure: for guest programs, whose output is
	// streamed through VBoxManage unchanged and whose stderr is theirs.
	Raw bool
	// MaxOutput bounds stdout and stderr for this call; zero means the
	// runner's bounds.
	MaxOutput int
}

// Result is a finished invocation.
type Result struct {
	// Args are the arguments it ran with.
	Args []string
	// Stdout and Stderr are the captured output, LF line ends unless the
	// call was Raw.
	Stdout []byte
	Stderr []byte
	// ExitCode is the exit status; -1 for a killed process.
	ExitCode int
	// Truncated reports output beyond the bound was dropped, of stdout
	// (StdoutTruncated), of stderr (StderrTruncated) or both.
	Truncated, StdoutTruncated, StderrTruncated bool
	// Duration is how long the process ran.
	Duration time.Duration
}

// ExitError is a VBoxManage that ran and failed: non-zero exit, or an
// "error:" line on stderr.
type ExitError struct {
	// Result is what it printed and its exit status.
	Result *Result
}

// Error names the command, the exit status and VBoxManage's first message.
func (e *ExitError) Error() string {
	d := fault.Classify(string(e.Result.Stdout), string(e.Result.Stderr), e.Result.ExitCode)
	msg := d.Message
	if msg == "" {
		msg = "no message"
	}
	return fmt.Sprintf("VBoxManage %s: exit status %d: %s", subcommand(e.Result.Args), e.Result.ExitCode, msg)
}

// TimeoutError is a VBoxManage killed because its deadline passed.
type TimeoutError struct {
	// Args are the arguments it ran with.
	Args []string
	// After is how long it ran.
	After time.Duration
	// Result holds what it printed before it was killed.
	Result *Result
}

// Error says which command was killed after how long.
func (e *TimeoutError) Error() string {
	return fmt.Sprintf("VBoxManage %s did not finish within %s and was killed", subcommand(e.Args), e.After.Round(time.Millisecond))
}

// StartError is a VBoxManage that could not be started at all: missing,
// not executable, wrong format.
type StartError struct {
	// Path is the executable.
	Path string
	// Err is the operating system's reason.
	Err error
}

// Error names the executable and the reason.
func (e *StartError) Error() string {
	return fmt.Sprintf("cannot run VBoxManage at %s: %v", e.Path, e.Err)
}

// Unwrap exposes the reason, e.g. fs.ErrNotExist.
func (e *StartError) Unwrap() error { return e.Err }

// Run executes one call. It returns the result and nil on success; an
// *ExitError (with the result) on failure; a *TimeoutError when the call's
// deadline or ctx's deadline killed it; a *StartError when the program
// could not run; ctx's error, wrapped, when ctx was canceled.
func (r *Runner) Run(ctx context.Context, c Call) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	runCtx, cancel := ctx, context.CancelFunc(func() {})
	if c.Timeout > 0 {
		runCtx, cancel = context.WithTimeout(ctx, c.Timeout)
	}
	defer cancel()

	maxOut, maxErr := r.opts.MaxStdout, r.opts.MaxStderr
	if c.MaxOutput > 0 {
		maxOut, maxErr = c.MaxOutput, c.MaxOutput
	}
	stdout, stderr := &capped{limit: maxOut}, &capped{limit: maxErr}
	cmd := exec.CommandContext(runCtx, r.opts.Path, c.Args...)
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = waitDelay
	dieWithParent(cmd)

	r.calls.Add(1)
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		r.kin.adopt(cmd.Process)
		err = cmd.Wait()
	}
	res := &Result{
		Args:            c.Args,
		Stdout:          stdout.buf.Bytes(),
		Stderr:          stderr.buf.Bytes(),
		ExitCode:        cmd.ProcessState.ExitCode(),
		Truncated:       stdout.dropped || stderr.dropped,
		StdoutTruncated: stdout.dropped,
		StderrTruncated: stderr.dropped,
		Duration:        time.Since(start),
	}
	if !c.Raw {
		res.Stdout = crlf(res.Stdout)
		res.Stderr = crlf(res.Stderr)
	}
	// The duration as text: a plugin logs JSON, where a time.Duration
	// would arrive in the host's log as a float of nanoseconds.
	log := r.opts.Logger.With("args", subcommand(c.Args), "exit", res.ExitCode, "duration", res.Duration.Round(time.Millisecond).String())

	if err != nil && runCtx.Err() != nil {
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			log.Debug("VBoxManage canceled")
			return nil, fmt.Errorf("VBoxManage %s: %w", subcommand(c.Args), ctx.Err())
		}
		log.Debug("VBoxManage killed at its deadline")
		return nil, &TimeoutError{Args: c.Args, After: res.Duration, Result: res}
	}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			log.Debug("VBoxManage did not start", "error", err)
			return nil, &StartError{Path: r.opts.Path, Err: err}
		}
	}
	if res.ExitCode != 0 || (!c.Raw && fault.HasError(string(res.Stderr))) {
		log.Debug("VBoxManage failed")
		return res, &ExitError{Result: res}
	}
	log.Debug("VBoxManage done")
	return res, nil
}

// subcommand names a call in messages and logs: the words before the first
// option or VM argument would be ideal, but VBoxManage puts the VM name
// second, so the whole argument list is shown; it never holds secrets,
// which travel in files.
func subcommand(args []string) string {
	return strings.Join(quoteArgs(args), " ")
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'\\;&|<>$`") {
			a = fmt.Sprintf("%q", a)
		}
		out[i] = a
	}
	return out
}

func crlf(b []byte) []byte {
	if !bytes.Contains(b, []byte("\r\n")) {
		return b
	}
	return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
}

// capped keeps the first limit bytes written to it and drops the rest
// while reporting success, so that a chatty process is never blocked or
// killed by a short write.
type capped struct {
	buf     bytes.Buffer
	limit   int
	dropped bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.limit - c.buf.Len(); room < len(p) {
		c.dropped = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}
