package host

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk"
)

// ErrPluginExited is matched (errors.Is) by the error of a call whose
// plugin process died or whose connection broke while the call was in
// flight. The host relaunches the plugin on the next call.
var ErrPluginExited = errors.New("plugin exited")

// ErrLaunch is matched by every error that kept a plugin from starting:
// a missing executable, a wrong checksum, no common protocol version, a
// configuration the plugin rejected.
var ErrLaunch = errors.New("plugin launch failed")

// Plugin is one configured plugin. It implements hypervisor.Driver by
// forwarding every call to the plugin process, launching it first if it is
// not running.
type Plugin struct {
	name string
	cfg  config.Plugin
	host *Host

	mu   sync.Mutex
	inst *instance
}

var _ hypervisor.Driver = (*Plugin)(nil)

// instance is one running plugin process.
type instance struct {
	client   *plugin.Client
	proc     *process
	remote   sdk.Remote
	hostPipe *os.File // write end of the watchdog pipe; closing it tells the plugin to exit
	pid      int
	// stray are the plugin's stdout and stderr after the handshake.
	stray []*strayOutput

	infoMu sync.Mutex
	info   *hypervisor.Info
}

// killWait bounds how long a kill waits for go-plugin to let the plugin go
// (it gives a plugin two seconds to exit by itself) before the host kills
// the plugin's whole process group regardless.
const killWait = 3 * time.Second

// kill stops the plugin (gracefully first: its driver's Close ends what it
// started), then kills whatever of its process group is left.
func (in *instance) kill() {
	done := make(chan struct{})
	go func() {
		in.client.Kill()
		close(done)
	}()
	t := time.NewTimer(killWait)
	select {
	case <-done:
	case <-t.C:
		in.proc.abort()
	}
	t.Stop()
	in.proc.sweep()
	in.proc.waitExit()
	if in.hostPipe != nil {
		_ = in.hostPipe.Close()
	}
	for _, s := range in.stray {
		s.flush()
	}
}

// Description is what `sandbox plugins` shows about a launched plugin.
type Description struct {
	// Plugin is the plugin's name in config.toml.
	Plugin string `json:"plugin"`
	// Path is the executable that runs.
	Path string `json:"path"`
	// Pid is the plugin process's id.
	Pid int `json:"pid"`
	// Protocol is the negotiated protocol version.
	Protocol int `json:"protocol"`
	// Info is the driver's own description; for a protocol 1 plugin the host
	// fills in the v1 capability set.
	Info hypervisor.Info `json:"info"`
}

// Name is the plugin's name in config.toml.
func (p *Plugin) Name() string { return p.name }

// Pid returns the running plugin process's id, or 0 when none runs.
func (p *Plugin) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inst == nil {
		return 0
	}
	return p.inst.pid
}

// Protocol returns the protocol version negotiated with the plugin,
// launching it if needed.
func (p *Plugin) Protocol(ctx context.Context) (int, error) {
	in, err := p.instance(ctx)
	if err != nil {
		return 0, err
	}
	return in.remote.Protocol(), nil
}

// Diagnostics is what the SDK inside the running plugin process reported
// about its driver breaking the contract where the wire hides it
// (sdk.Diagnostics): zero when no process runs, and from zero again after a
// relaunch.
func (p *Plugin) Diagnostics() sdk.Diagnostics {
	p.mu.Lock()
	in := p.inst
	p.mu.Unlock()
	if in == nil || in.remote == nil {
		return sdk.Diagnostics{}
	}
	return in.remote.Diagnostics()
}

// Describe launches the plugin if needed and describes it.
func (p *Plugin) Describe(ctx context.Context) (Description, error) {
	in, err := p.instance(ctx)
	if err != nil {
		return Description{}, err
	}
	info, err := p.Info(ctx)
	if err != nil {
		return Description{}, err
	}
	return Description{
		Plugin:   p.name,
		Path:     resolvedPath(p.cfg, p.host.dir),
		Pid:      in.pid,
		Protocol: in.remote.Protocol(),
		Info:     info,
	}, nil
}

// Kill stops the plugin process if one runs. The next call launches a new
// one (unless the host is closed).
func (p *Plugin) Kill() {
	p.mu.Lock()
	in := p.inst
	p.inst = nil
	p.mu.Unlock()
	if in != nil {
		in.kill()
	}
}

// instance returns the running plugin process, launching one if none runs
// or the last one exited.
func (p *Plugin) instance(ctx context.Context) (*instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inst != nil && !p.inst.client.Exited() {
		return p.inst, nil
	}
	if p.inst != nil {
		p.host.log.Warn("plugin process exited; relaunching", "plugin", p.name, "pid", p.inst.pid)
		p.inst.kill()
		p.inst = nil
	}
	if p.host.isClosed() {
		return nil, p.launchError(errors.New("the plugin host is shutting down"))
	}
	in, err := p.launch(ctx)
	if err != nil {
		return nil, err
	}
	p.inst = in
	return in, nil
}

// launch starts the plugin process, negotiates the protocol and
// configures the plugin, all within start_timeout. Canceling ctx or closing
// the host ends the launch at once; a launch that fails or is given up
// kills the plugin with every process it started, whatever those do with
// its pipes.
func (p *Plugin) launch(ctx context.Context) (*instance, error) {
	timeout := p.cfg.StartTimeout
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stop := context.AfterFunc(p.host.ctx, cancel)
	defer stop()

	path := resolvedPath(p.cfg, p.host.dir)
	if err := p.checkExecutable(path); err != nil {
		return nil, p.launchError(err)
	}
	env := append(environment(p.cfg, os.LookupEnv), sdk.EnvLogLevel+"="+p.host.log.GetLevel().String())
	var pipeR, pipeW *os.File
	if runtime.GOOS != "windows" {
		var err error
		if pipeR, pipeW, err = os.Pipe(); err != nil {
			return nil, p.launchError(err)
		}
		env = append(env, sdk.EnvHostFD+"=3")
	}
	var checksum []byte
	if p.cfg.SHA256 != "" {
		checksum, _ = hex.DecodeString(p.cfg.SHA256) // validated when the config was loaded
	}
	stdout := newStrayOutput(p.host.log.Named(p.name), p.name, "stdout")
	stderr := newStrayOutput(p.host.log.Named(p.name), p.name, "stderr")
	// The real stdout, which only code writing to file descriptor 1 itself
	// reaches after the handshake; a writer of its own keeps its lines
	// apart from os.Stdout's.
	fd1 := newStrayOutput(p.host.log.Named(p.name), p.name, "stdout")
	var procMu sync.Mutex
	var proc *process
	current := func() *process {
		procMu.Lock()
		defer procMu.Unlock()
		return proc
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: sdk.ClientPluginSets(),
		// go-plugin makes a directory of its own (mode 0700) for the
		// plugin's socket and tells the plugin so only when it runs the
		// process through a RunnerFunc.
		RunnerFunc: func(_ hclog.Logger, spec *exec.Cmd, _ string) (runner.Runner, error) {
			pr, err := newProcess(path, p.cfg.Args, append(append([]string{}, env...), spec.Env...), checksum, pipeR)
			if err != nil {
				return nil, err
			}
			pr.stray = fd1
			procMu.Lock()
			defer procMu.Unlock()
			if lctx.Err() != nil {
				return nil, errAborted
			}
			proc = pr
			return pr, nil
		},
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: p.host.socketDir()},
		AutoMTLS:         p.cfg.AutoMTLS,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           pluginLog{Logger: p.host.log.Named(p.name), proc: current},
		SyncStdout:       stdout,
		SyncStderr:       stderr,
		SkipHostEnv:      true,
		StartTimeout:     timeout,
	})
	closePipes := func() {
		if pipeR != nil {
			_ = pipeR.Close() // the child has its copy; ours would keep the pipe open forever
		}
	}

	type started struct {
		rpc plugin.ClientProtocol
		err error
	}
	handshake := make(chan started, 1)
	go func() {
		rpc, err := client.Client()
		handshake <- started{rpc, err}
	}()
	var hs started
	select {
	case hs = <-handshake:
	case <-lctx.Done():
		procMu.Lock()
		pr := proc
		proc = nil // RunnerFunc refuses from now on (lctx is done)
		procMu.Unlock()
		if pr != nil {
			pr.abort()
		}
		// With the process group dead its pipes close, go-plugin notices
		// and lets the client go; a process that escaped the group is
		// not waited for.
		go func() {
			<-handshake
			client.Kill()
		}()
		closePipes()
		if pipeW != nil {
			_ = pipeW.Close()
		}
		return nil, p.launchError(p.giveUpReason(ctx, timeout))
	}
	closePipes()
	in := &instance{client: client, proc: current(), hostPipe: pipeW, stray: []*strayOutput{stdout, stderr, fd1}}
	if in.proc == nil {
		in.proc = &process{exited: make(chan struct{})} // go-plugin failed before it ran anything
	}
	fail := func(err error) (*instance, error) {
		in.kill()
		return nil, p.launchError(err)
	}
	if hs.err != nil {
		if lctx.Err() != nil {
			return fail(p.giveUpReason(ctx, timeout))
		}
		return fail(p.explainStartError(hs.err, path))
	}
	in.pid = in.proc.Pid()
	raw, err := hs.rpc.Dispense(sdk.PluginName)
	if err != nil {
		return fail(err)
	}
	remote, ok := raw.(sdk.Remote)
	if !ok {
		return fail(fmt.Errorf("plugin served %T, not a hypervisor driver", raw))
	}
	in.remote = remote
	err = remote.Configure(lctx, sdk.Config{
		Plugin: p.name,
		File:   p.host.opts.File,
		Dir:    p.host.dir,
		Table:  []string{"plugins", p.name, "config"},
		Data:   p.host.opts.Data,
	})
	if err != nil && lctx.Err() != nil {
		return fail(fmt.Errorf("while the plugin was being configured: %w", p.giveUpReason(ctx, timeout)))
	}
	if err != nil && errors.Is(err, sdk.ErrTransport) {
		// The handshake named a socket the host cannot talk to: nothing
		// heard the configuration, let alone rejected it.
		addr := "its socket"
		if rc := client.ReattachConfig(); rc != nil && rc.Addr != nil {
			addr = rc.Addr.String()
		}
		return fail(fmt.Errorf("%s completed the plugin handshake, but nothing answers on the socket it named (%s): %w; "+
			"is plugins.%s.path in %s a plugin built with the sandbox SDK?", path, addr, err, p.name, p.host.opts.File))
	}
	if err != nil {
		var he *hypervisor.Error
		if errors.As(err, &he) && he.Message != "" {
			err = errors.New(he.Message) // the plugin's words, e.g. config.toml:12: key: unknown key
		}
		if table := "plugins." + p.name + ".config"; !strings.Contains(err.Error(), table) {
			// Words of the driver's own ("VM worker: permission denied")
			// need the table they are about.
			return fail(fmt.Errorf("it rejected its configuration, its table [%s] in %s: %w", table, p.host.opts.File, err))
		}
		return fail(fmt.Errorf("it rejected its configuration: %w", err))
	}
	p.host.log.Debug("plugin launched", "plugin", p.name, "pid", in.pid, "protocol", remote.Protocol(),
		"auto_mtls", p.cfg.AutoMTLS)
	return in, nil
}

// giveUpReason says why a launch was cut short: the caller gave up (Ctrl-C),
// the host is shutting down, or start_timeout passed.
func (p *Plugin) giveUpReason(ctx context.Context, timeout time.Duration) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted while the plugin was starting: %w", ctx.Err())
	case p.host.ctx.Err() != nil:
		return errors.New("the plugin host is shutting down")
	}
	return fmt.Errorf("%s did not complete the plugin handshake within start_timeout (%s): it is not a sandbox plugin, "+
		"or it hangs at start; check plugins.%s.path in %s, or raise plugins.%s.start_timeout",
		resolvedPath(p.cfg, p.host.dir), timeout, p.name, p.host.opts.File, p.name)
}

// checkExecutable tells a missing or non-executable plugin apart before
// anything is started, naming the setting to fix.
func (p *Plugin) checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() {
		build := "build it as its own documentation says"
		if bundled(path) {
			build = "build it with `make build` in sandbox's source tree"
		}
		return fmt.Errorf("no plugin executable at %s (plugins.%s.path in %s): %s, or fix the path",
			path, p.name, p.host.opts.File, build)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable (plugins.%s.path in %s): run `chmod +x %s`, or point path at the plugin executable",
			path, p.name, p.host.opts.File, path)
	}
	return nil
}

// explainStartError rewords go-plugin's start failures into what the
// operator should do.
func (p *Plugin) explainStartError(err error, path string) error {
	msg := err.Error()
	setting := fmt.Sprintf("plugins.%s.path in %s", p.name, p.host.opts.File)
	switch {
	case errors.Is(err, plugin.ErrChecksumsDoNotMatch):
		return fmt.Errorf("%s does not match plugins.%s.sha256 in %s: the file changed since the checksum was written; "+
			"rebuild or update the checksum (sha256sum %s)", path, p.name, p.host.opts.File, path)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("cannot run %s (%s): %v", path, setting, err)
	case strings.Contains(msg, "Incompatible API version") || strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("%s speaks no protocol version this sandbox knows (it offers 1 and 2): %s; "+
			"use a plugin built for this sandbox", path, firstLine(msg))
	case strings.Contains(msg, "Unrecognized remote plugin message:"):
		_, said, _ := strings.Cut(msg, "Unrecognized remote plugin message:")
		said = firstLine(strings.TrimSpace(said))
		if said == "" || strings.HasPrefix(said, "Failed to read any lines") {
			return fmt.Errorf("%s exited without the plugin handshake; is %s a plugin built with the sandbox SDK?", path, setting)
		}
		return fmt.Errorf("%s printed %q instead of the plugin handshake; is %s a plugin built with the sandbox SDK?",
			path, said, setting)
	case strings.Contains(msg, "plugin exited before we could connect"):
		return fmt.Errorf("%s exited before the plugin handshake; is %s a plugin built with the sandbox SDK?", path, setting)
	}
	return err
}

// bundledPlugins are the executables `make build` builds from this
// source tree (plugins/*/cmd/sandbox-plugin-*). A hint for one of them can
// say how sandbox's own tree builds it; any other plugin is a third party's,
// with a build and a documentation of its own.
var bundledPlugins = []string{"sandbox-plugin-fake", "sandbox-plugin-libvirt", "sandbox-plugin-qemu", "sandbox-plugin-vboxmanage"}

// bundled reports whether path names one of sandbox's own plugins.
func bundled(path string) bool {
	base := strings.TrimSuffix(filepath.Base(path), ".exe")
	return slices.Contains(bundledPlugins, base)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// LaunchError is why a plugin could not be started. It matches ErrLaunch
// and hypervisor.ErrUnavailable (the driver cannot be reached), so the core
// treats it like any unreachable hypervisor.
type LaunchError struct {
	// Plugin is the plugin's name in config.toml.
	Plugin string
	// Err says what went wrong and what to do about it.
	Err error
}

func (e *LaunchError) Error() string {
	return fmt.Sprintf("plugin %q could not start: %v", e.Plugin, e.Err)
}

// Unwrap exposes ErrLaunch, hypervisor.ErrUnavailable and the cause.
func (e *LaunchError) Unwrap() []error {
	return []error{ErrLaunch, hypervisor.ErrUnavailable, e.Err}
}

func (p *Plugin) launchError(err error) error {
	return &LaunchError{Plugin: p.name, Err: err}
}

// check turns a broken connection into ErrPluginExited and forgets the
// dead instance so that the next call relaunches it.
func (p *Plugin) check(in *instance, err error, op, vm string) error {
	if err == nil || !errors.Is(err, sdk.ErrTransport) {
		return err
	}
	p.mu.Lock()
	if p.inst == in {
		p.inst = nil
	}
	p.mu.Unlock()
	in.kill()
	return &hypervisor.Error{
		Code: hypervisor.CodeUnavailable,
		Op:   op,
		VM:   vm,
		Message: fmt.Sprintf("plugin %q (pid %d) exited or lost its connection during the call; "+
			"it is relaunched on the next call", p.name, in.pid),
		Err: ErrPluginExited,
	}
}

// call runs one contract operation on the plugin process.
func call[T any](ctx context.Context, p *Plugin, op, vm string, f func(sdk.Remote) (T, error)) (T, error) {
	in, err := p.instance(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := f(in.remote)
	return v, p.check(in, err, op, vm)
}

// Info returns the driver's description; it is cached per plugin process.
func (p *Plugin) Info(ctx context.Context) (hypervisor.Info, error) {
	in, err := p.instance(ctx)
	if err != nil {
		return hypervisor.Info{}, err
	}
	in.infoMu.Lock()
	defer in.infoMu.Unlock()
	if in.info != nil {
		return *in.info, nil
	}
	info, err := in.remote.Info(ctx)
	if err = p.check(in, err, hypervisor.OpInfo, ""); err != nil {
		return hypervisor.Info{}, err
	}
	in.info = &info
	return info, nil
}

// ListVMs forwards to the plugin.
func (p *Plugin) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	return call(ctx, p, hypervisor.OpList, "", func(r sdk.Remote) ([]hypervisor.VM, error) { return r.ListVMs(ctx) })
}

// Status forwards to the plugin.
func (p *Plugin) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	return call(ctx, p, hypervisor.OpStatus, vm, func(r sdk.Remote) (hypervisor.Status, error) { return r.Status(ctx, vm) })
}

// Start forwards to the plugin.
func (p *Plugin) Start(ctx context.Context, vm string) error {
	_, err := call(ctx, p, hypervisor.OpStart, vm, func(r sdk.Remote) (struct{}, error) { return struct{}{}, r.Start(ctx, vm) })
	return err
}

// Stop forwards to the plugin.
func (p *Plugin) Stop(ctx context.Context, vm string, m hypervisor.StopMethod) error {
	_, err := call(ctx, p, hypervisor.OpStop, vm, func(r sdk.Remote) (struct{}, error) { return struct{}{}, r.Stop(ctx, vm, m) })
	return err
}

// Unlock forwards to the plugin.
func (p *Plugin) Unlock(ctx context.Context, vm string) error {
	_, err := call(ctx, p, hypervisor.OpUnlock, vm, func(r sdk.Remote) (struct{}, error) { return struct{}{}, r.Unlock(ctx, vm) })
	return err
}

// Restore forwards to the plugin.
func (p *Plugin) Restore(ctx context.Context, vm, snapshot string) error {
	_, err := call(ctx, p, hypervisor.OpRestore, vm, func(r sdk.Remote) (struct{}, error) {
		return struct{}{}, r.Restore(ctx, vm, snapshot)
	})
	return err
}

// Cleanup forwards to the plugin.
func (p *Plugin) Cleanup(ctx context.Context, vm string, req hypervisor.CleanupRequest) (hypervisor.CleanupResult, error) {
	return call(ctx, p, hypervisor.OpCleanup, vm, func(r sdk.Remote) (hypervisor.CleanupResult, error) {
		return r.Cleanup(ctx, vm, req)
	})
}

// CopyIn forwards to the plugin.
func (p *Plugin) CopyIn(ctx context.Context, vm, hostPath, guestPath string) error {
	_, err := call(ctx, p, hypervisor.OpCopyIn, vm, func(r sdk.Remote) (struct{}, error) {
		return struct{}{}, r.CopyIn(ctx, vm, hostPath, guestPath)
	})
	return err
}

// Exec forwards to the plugin.
func (p *Plugin) Exec(ctx context.Context, vm string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	return call(ctx, p, hypervisor.OpExec, vm, func(r sdk.Remote) (hypervisor.ExecResult, error) { return r.Exec(ctx, vm, req) })
}

// CopyOut forwards to the plugin.
func (p *Plugin) CopyOut(ctx context.Context, vm, guestPath, hostPath string) error {
	_, err := call(ctx, p, hypervisor.OpCopyOut, vm, func(r sdk.Remote) (struct{}, error) {
		return struct{}{}, r.CopyOut(ctx, vm, guestPath, hostPath)
	})
	return err
}

// Watch forwards to the plugin. If the plugin dies the channel closes;
// the caller falls back to polling Status, which relaunches it.
func (p *Plugin) Watch(ctx context.Context, vm string) (<-chan hypervisor.Status, error) {
	return call(ctx, p, hypervisor.OpWatch, vm, func(r sdk.Remote) (<-chan hypervisor.Status, error) { return r.Watch(ctx, vm) })
}
