package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// The guest of a procvm VM is its directory: guest paths are relative to
// it, and commands run in it. os.Root keeps a copy inside it whatever the
// path says ("..", symlinks).

// guest checks that the VM runs (§9.4) and opens its directory.
func (d *Driver) guest(ctx context.Context, op, name string) (*os.Root, error) {
	if err := d.begin(ctx, op, name); err != nil {
		return nil, err
	}
	d.locks[name].Lock()
	st := d.statusLocked(name)
	d.locks[name].Unlock()
	if st.Power != hypervisor.PowerRunning {
		return nil, hypervisor.NewError(hypervisor.CodeInvalidState, op, name, "the VM is not running (%s)", st.Raw)
	}
	root, err := os.OpenRoot(d.path(name, "disk"))
	if err != nil {
		return nil, hypervisor.NewError(hypervisor.CodeFailed, op, name, "%v", err)
	}
	return root, nil
}

// rel turns a guest path into one relative to the VM's directory.
func rel(op, name, guestPath string) (string, error) {
	if filepath.IsAbs(guestPath) {
		return "", hypervisor.NewError(hypervisor.CodeFailed, op, name,
			"guest path %q is absolute; procvm guest paths are relative to the VM's directory", guestPath)
	}
	return filepath.Clean(guestPath), nil
}

// CopyIn copies a host file into the VM's directory (§9.1).
func (d *Driver) CopyIn(ctx context.Context, name, hostPath, guestPath string) error {
	root, err := d.guest(ctx, hypervisor.OpCopyIn, name)
	if err != nil {
		return err
	}
	defer root.Close()
	p, err := rel(hypervisor.OpCopyIn, name, guestPath)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name, "%v", err)
	}
	in, err := os.Open(hostPath)
	if err != nil {
		return fail(err)
	}
	defer in.Close()
	if err := root.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fail(err)
	}
	out, err := root.Create(p)
	if err != nil {
		return fail(err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

// CopyOut copies a file of the VM's directory to the host (§9.3).
func (d *Driver) CopyOut(ctx context.Context, name, guestPath, hostPath string) error {
	root, err := d.guest(ctx, hypervisor.OpCopyOut, name)
	if err != nil {
		return err
	}
	defer root.Close()
	p, err := rel(hypervisor.OpCopyOut, name, guestPath)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "%v", err)
	}
	in, err := root.Open(p)
	if err != nil {
		return fail(err)
	}
	defer in.Close()
	out, err := os.Create(hostPath)
	if err != nil {
		return fail(err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

// Exec runs a command in the VM's directory (§9.2), keeping at most
// maxOutput (or the request's MaxOutput) bytes of each stream (§9.5). Its
// exit status is a result, whatever it is; a program that cannot be found exits 127, as a
// shell says so. A command still running at its timeout, or when ctx ends,
// is killed and answers timeout.
func (d *Driver) Exec(ctx context.Context, name string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	root, err := d.guest(ctx, hypervisor.OpExec, name)
	if err != nil {
		return hypervisor.ExecResult{}, err
	}
	root.Close()
	runCtx := ctx
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(runCtx, req.Path, req.Args...)
	cmd.Dir = d.path(name, "disk")
	cmd.WaitDelay = 100 * time.Millisecond // a killed command's children must not hold its output open
	limit := int(req.Limit(maxOutput))
	stdout, stderr := &capped{limit: limit}, &capped{limit: limit}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case runCtx.Err() != nil:
		if err := hypervisor.FromContext(ctx, hypervisor.OpExec, name); err != nil {
			return hypervisor.ExecResult{}, err
		}
		return hypervisor.ExecResult{}, hypervisor.NewError(hypervisor.CodeTimeout, hypervisor.OpExec, name,
			"%s still running after %s; killed", req.Path, req.Timeout)
	case errors.As(err, &exit):
		return result(exit.ExitCode(), stdout, stderr), nil
	case errors.Is(err, exec.ErrWaitDelay):
		// It exited, but its output was not read to the end within
		// WaitDelay (a child of its holds it open, or the machine is
		// busy): what was read is the result, said to be cut.
		stdout.dropped, stderr.dropped = true, true
		return result(cmd.ProcessState.ExitCode(), stdout, stderr), nil
	case errors.Is(err, exec.ErrNotFound):
		return hypervisor.ExecResult{ExitCode: 127, Stderr: []byte(err.Error() + "\n")}, nil
	case err != nil:
		return hypervisor.ExecResult{}, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpExec, name, "%v", err)
	}
	return result(0, stdout, stderr), nil
}

// maxOutput bounds what Exec keeps of each of a command's stdout and
// stderr (§9.5): the guest's output is the adversary's.
const maxOutput = 1 << 20

func result(code int, stdout, stderr *capped) hypervisor.ExecResult {
	return hypervisor.ExecResult{ExitCode: code, Stdout: stdout.buf.Bytes(), Stderr: stderr.buf.Bytes(),
		StdoutTruncated: stdout.dropped, StderrTruncated: stderr.dropped}
}

// capped keeps the first limit bytes written to it and drops the rest,
// reporting success so that the command is not stopped by a short write.
// (Its buffer is a field, not embedded: an embedded bytes.Buffer's
// ReadFrom would let io.Copy go around Write and its bound.)
type capped struct {
	buf     bytes.Buffer
	limit   int
	dropped bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.limit - c.buf.Len(); room < len(p) {
		c.dropped = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}
