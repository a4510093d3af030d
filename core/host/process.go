package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
)

// drainWait is how long a killed plugin's output pipes stay open for its
// last lines before the host closes them: a process the plugin started
// that escaped the kill would otherwise hold them, and go-plugin would
// wait on them for ever.
const drainWait = 500 * time.Millisecond

// errAborted refuses to start a plugin whose launch was given up.
var errAborted = errors.New("the launch was given up")

// process runs one plugin process for go-plugin (its runner.Runner). The
// process leads a process group of its own (a job object on Windows), so
// that killing it kills everything it started; its output pipes belong to
// the host, which closes them after a kill whoever else holds them; and a
// launch that was given up never starts it.
type process struct {
	cmd      *exec.Cmd
	path     string
	checksum []byte
	// closeAfterStart are the child's ends of the pipes.
	closeAfterStart []*os.File
	stdout, stderr  *os.File
	// stray gets what the process writes to its real stdout after the
	// handshake line, which go-plugin reads and drops.
	stray io.Writer

	// exited is closed once the process has exited and been reaped.
	exited chan struct{}

	mu      sync.Mutex
	aborted bool
	started bool
	killed  bool
	pid     int
	tree    *tree
}

var _ runner.Runner = (*process)(nil)

// newProcess prepares the plugin's command: path with args and env, and
// extra as file descriptor 3 (the watchdog pipe).
func newProcess(path string, args, env []string, checksum []byte, extra *os.File) (*process, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = outW, errW
	if extra != nil {
		cmd.ExtraFiles = []*os.File{extra}
	}
	ownGroup(cmd)
	return &process{cmd: cmd, path: path, checksum: checksum, stdout: outR, stderr: errR,
		closeAfterStart: []*os.File{outW, errW}, exited: make(chan struct{})}, nil
}

// Start checks the executable's checksum, when one is configured, and
// starts the process unless the launch was given up meanwhile.
func (p *process) Start(context.Context) error {
	if p.checksum != nil {
		data, err := os.ReadFile(p.path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		if !bytes.Equal(sum[:], p.checksum) {
			return plugin.ErrChecksumsDoNotMatch
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() {
		for _, f := range p.closeAfterStart {
			f.Close()
		}
	}()
	if p.aborted {
		return errAborted
	}
	if err := p.cmd.Start(); err != nil {
		return err
	}
	p.started, p.pid = true, p.cmd.Process.Pid
	p.tree = newTree(p.cmd.Process)
	return nil
}

// abort gives up the launch: a process not yet started never starts, one
// started is killed with everything it started, and waited for.
func (p *process) abort() {
	p.mu.Lock()
	p.aborted = true
	p.mu.Unlock()
	_ = p.Kill(context.Background())
	p.waitExit()
}

// reapWait bounds how long the host waits for a plugin it killed to be
// gone, so that a command that returns leaves no plugin behind.
const reapWait = 2 * time.Second

// waitExit waits up to reapWait for a started process to have exited.
func (p *process) waitExit() {
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if !started {
		return
	}
	t := time.NewTimer(reapWait)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
	}
}

// Wait waits for the process to exit. go-plugin calls it once its output
// has been read to the end.
func (p *process) Wait(context.Context) error {
	err := p.cmd.Wait()
	// Read to the end by now: the host's ends of the pipes go too.
	p.stdout.Close()
	p.stderr.Close()
	close(p.exited)
	return err
}

// Kill kills the process and everything it started, then closes its output
// pipes once what it wrote last has had drainWait to be read.
func (p *process) Kill(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		return nil
	}
	first := !p.killed
	p.killed = true
	p.tree.kill()
	if first {
		time.AfterFunc(drainWait, func() {
			p.stdout.Close()
			p.stderr.Close()
		})
	}
	return nil
}

// sweep kills whatever the process started that is still running after it
// exited (by itself, or shut down gracefully), then lets go of the group.
func (p *process) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		p.tree.kill()
		p.tree.release()
	}
}

// wasKilled reports whether the host killed the process.
func (p *process) wasKilled() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killed
}

// Pid returns the process id; 0 before the start.
func (p *process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// Stdout carries the go-plugin handshake. What follows its first line
// comes from code that wrote to file descriptor 1 itself rather than to
// os.Stdout, which go-plugin's Serve redirects (a child process that
// inherited it, C code): go-plugin drops it, so a copy goes to stray.
func (p *process) Stdout() io.ReadCloser {
	if p.stray == nil {
		return p.stdout
	}
	return &afterHandshake{ReadCloser: p.stdout, stray: p.stray}
}

// afterHandshake passes a plugin's stdout through and copies what follows
// its first line to stray.
type afterHandshake struct {
	io.ReadCloser
	stray io.Writer
	past  bool
}

func (r *afterHandshake) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	rest := b[:n]
	if !r.past {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			return n, err
		}
		r.past, rest = true, rest[i+1:]
	}
	if len(rest) > 0 {
		_, _ = r.stray.Write(rest)
	}
	return n, err
}

// Stderr carries the plugin's log.
func (p *process) Stderr() io.ReadCloser { return p.stderr }

// Name is the executable.
func (p *process) Name() string { return p.path }

// ID is the process id, empty before the start (go-plugin then has nothing
// to kill).
func (p *process) ID() string {
	if pid := p.Pid(); pid != 0 {
		return strconv.Itoa(pid)
	}
	return ""
}

// Diagnose adds nothing: the host words start failures itself.
func (p *process) Diagnose(context.Context) string { return "" }

// PluginToHost keeps addresses: host and plugin share the machine.
func (p *process) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

// HostToPlugin keeps addresses: host and plugin share the machine.
func (p *process) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

// pluginLog is the logger go-plugin gets for one plugin: its lines about
// a process the host killed on purpose (not exiting within its grace
// period, exiting on a signal) are debug lines, not warnings and errors an
// operator would take for a fault.
type pluginLog struct {
	hclog.Logger
	proc func() *process
}

func (l pluginLog) killedOnPurpose(msg string) bool {
	switch msg {
	case "plugin failed to exit gracefully":
		return true
	case "plugin process exited":
		p := l.proc()
		return p != nil && p.wasKilled()
	}
	return false
}

// Warn implements hclog.Logger.
func (l pluginLog) Warn(msg string, args ...any) {
	if l.killedOnPurpose(msg) {
		l.Logger.Debug(msg, args...)
		return
	}
	l.Logger.Warn(msg, args...)
}

// Error implements hclog.Logger.
func (l pluginLog) Error(msg string, args ...any) {
	if l.killedOnPurpose(msg) {
		l.Logger.Debug(msg, args...)
		return
	}
	l.Logger.Error(msg, args...)
}

func (p *process) String() string { return fmt.Sprintf("%s (pid %d)", p.path, p.Pid()) }
