package qemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qmp"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// cleanupBound bounds what a guest operation does after its caller's
// deadline to leave nothing behind: killing a timed-out command.
const cleanupBound = 500 * time.Millisecond

// agent opens a session with the running VM's guest agent for a guest
// operation, waiting at most guest.ready_wait for the agent to answer
// (§9.4: a guest not ready yet answers invalid state). Guest operations
// on one VM take turns: the agent's channel serves one client at a time.
func (d *Driver) agent(ctx context.Context, op, name string) (*qmp.Agent, func(), error) {
	v, err := d.vmOf(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	if !*v.GuestAgent {
		return nil, nil, hypervisor.NewError(hypervisor.CodeInvalidState, op, name,
			"the VM has no guest agent channel (guest_agent = false in its [vms.%s] table)", name)
	}
	release, err := d.acquire(ctx, &d.agents, op, name)
	if err != nil {
		return nil, nil, err
	}
	st, p := d.observe(ctx, v)
	if p.pid == 0 || st.Power != hypervisor.PowerRunning {
		release()
		return nil, nil, hypervisor.NewError(hypervisor.CodeInvalidState, op, name,
			"the VM is %s; guest operations need a running guest", st.Raw)
	}
	actx, cancel := context.WithTimeout(ctx, d.cfg.Guest.ReadyWait)
	defer cancel()
	a, err := qmp.DialAgent(actx, v.path(fileAgent))
	if err != nil {
		release()
		if cerr := hypervisor.FromContext(ctx, op, name); cerr != nil {
			return nil, nil, cerr
		}
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			// The caller's deadline ended the wait; ctx reports it a
			// moment later than the agent's socket does, and on a busy
			// machine the moment is long enough to answer in between.
			return nil, nil, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: op, VM: name, Err: context.DeadlineExceeded}
		}
		if errors.Is(err, qmp.ErrNoAgent) || errors.Is(err, qmp.ErrBusy) {
			return nil, nil, &hypervisor.Error{Code: hypervisor.CodeInvalidState, Op: op, VM: name,
				Message: "the guest agent (qemu-ga) does not answer yet", Err: err}
		}
		return nil, nil, &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: name, Message: "cannot reach the guest agent", Err: err}
	}
	return a, func() { a.Close(); release() }, nil
}

// guestFail turns an agent error into a contract error.
func guestFail(ctx context.Context, op, name, what string, err error) error {
	if cerr := hypervisor.FromContext(ctx, op, name); cerr != nil {
		return cerr
	}
	return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: name, Message: what + ": " + err.Error(), Err: err}
}

// CopyIn copies a host file into the guest (§9.1) in chunks of
// guest.chunk_size through guest-file-write.
func (d *Driver) CopyIn(ctx context.Context, name, hostPath, guestPath string) error {
	src, err := os.Open(hostPath)
	if err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name, "%v", err)
	}
	defer src.Close()
	a, done, err := d.agent(ctx, hypervisor.OpCopyIn, name)
	if err != nil {
		return err
	}
	defer done()
	h, err := a.FileOpen(ctx, guestPath, "w")
	if err != nil {
		return guestFail(ctx, hypervisor.OpCopyIn, name, "guest-file-open "+guestPath, err)
	}
	buf := make([]byte, d.cfg.Guest.ChunkSize)
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if err := a.FileWrite(ctx, h, buf[:n]); err != nil {
				return guestFail(ctx, hypervisor.OpCopyIn, name, "guest-file-write "+guestPath, err)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			_ = a.FileClose(ctx, h)
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name, "read %s: %v", hostPath, rerr)
		}
	}
	if err := a.FileClose(ctx, h); err != nil {
		return guestFail(ctx, hypervisor.OpCopyIn, name, "guest-file-close "+guestPath, err)
	}
	return nil
}

// CopyOut copies a guest file to the host (§9.3) in chunks of
// guest.chunk_size through guest-file-read. The host file appears whole
// or not at all; a guest file larger than guest.max_copy_out fails the
// copy (§9.5).
func (d *Driver) CopyOut(ctx context.Context, name, guestPath, hostPath string) error {
	a, done, err := d.agent(ctx, hypervisor.OpCopyOut, name)
	if err != nil {
		return err
	}
	defer done()
	h, err := a.FileOpen(ctx, guestPath, "r")
	if err != nil {
		return guestFail(ctx, hypervisor.OpCopyOut, name, "guest-file-open "+guestPath, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(hostPath), "."+filepath.Base(hostPath)+".part-*")
	if err != nil {
		_ = a.FileClose(ctx, h)
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "%v", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	var copied int64
	for {
		data, eof, err := a.FileRead(ctx, h, d.cfg.Guest.ChunkSize)
		if err != nil {
			return guestFail(ctx, hypervisor.OpCopyOut, name, "guest-file-read "+guestPath, err)
		}
		if copied += int64(len(data)); copied > d.cfg.Guest.MaxCopyOut {
			_ = a.FileClose(ctx, h)
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name,
				"the guest file %s is larger than guest.max_copy_out (%d bytes); nothing was copied", guestPath, d.cfg.Guest.MaxCopyOut)
		}
		if _, err := tmp.Write(data); err != nil {
			_ = a.FileClose(ctx, h)
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "write %s: %v", hostPath, err)
		}
		if eof || len(data) == 0 {
			break
		}
	}
	if err := a.FileClose(ctx, h); err != nil {
		return guestFail(ctx, hypervisor.OpCopyOut, name, "guest-file-close "+guestPath, err)
	}
	if err := tmp.Close(); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "write %s: %v", hostPath, err)
	}
	if err := os.Rename(tmp.Name(), hostPath); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "%v", err)
	}
	return nil
}

// Exec runs a command in the guest through guest-exec and polls
// guest-exec-status until it ends (§9.2), keeping at most guest.max_output
// (or the request's max_output) bytes of each stream (§9.5). A command still running at its
// timeout, or when ctx ends, is killed in the guest with guest.kill and
// answers timeout. A command killed by a signal exits 128+signal, as a
// shell reports it.
func (d *Driver) Exec(ctx context.Context, name string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	a, done, err := d.agent(ctx, hypervisor.OpExec, name)
	if err != nil {
		return hypervisor.ExecResult{}, err
	}
	defer done()
	rctx := ctx
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	// The socket's deadline is rctx's and may fire a moment before rctx
	// reports it: a read cut by it is the command's deadline, not a failure.
	deadline := func(err error) bool {
		return rctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
	}
	pid, err := a.Exec(rctx, req.Path, req.Args)
	if err != nil {
		if deadline(err) && ctx.Err() == nil {
			return hypervisor.ExecResult{}, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: hypervisor.OpExec, VM: name,
				Message: "the guest agent did not start " + req.Path + " before the command's deadline", Err: err}
		}
		return hypervisor.ExecResult{}, guestFail(ctx, hypervisor.OpExec, name, "guest-exec "+req.Path, err)
	}
	limit := int(req.Limit(int64(d.cfg.Guest.MaxOutput)))
	var st qmp.ExecStatus
	err = wait.Until(rctx, execPoll, func(rctx context.Context) (bool, error) {
		s, err := a.ExecStatus(rctx, pid, limit)
		switch {
		case err == nil:
			st = s
			return s.Exited, nil
		case !deadline(err):
			return false, guestFail(ctx, hypervisor.OpExec, name, "guest-exec-status", err)
		}
		<-rctx.Done() // the socket's deadline fired first: rctx's is upon us
		return false, rctx.Err()
	})
	if err == nil {
		return execResult(st, limit)
	}
	var he *hypervisor.Error
	if errors.As(err, &he) {
		return hypervisor.ExecResult{}, err
	}
	msg := "the command " + req.Path + " was still running at its deadline; "
	if kerr := d.killGuest(a, name, pid); kerr != nil {
		msg += "could not kill it in the guest (" + kerr.Error() + "): it may still be running"
	} else {
		msg += "killed it in the guest"
	}
	return hypervisor.ExecResult{}, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: hypervisor.OpExec, VM: name, Message: msg, Err: rctx.Err()}
}

// execPoll paces the guest-exec-status polls of a running command.
var execPoll = wait.Policy{Initial: 2 * time.Millisecond, Max: 25 * time.Millisecond, Factor: 2}

// killGuest kills a guest command that outlived its deadline with
// guest.kill, and collects its status so that the agent forgets it. It
// says why when the command may still run: the agent did not answer, or
// the kill command failed.
func (d *Driver) killGuest(a *qmp.Agent, name string, pid int) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupBound)
	defer cancel()
	fail := func(err error) error {
		d.log.Warn("cannot kill a timed-out guest command", "vm", name, "pid", pid, "error", err)
		return err
	}
	if err := a.Resync(ctx); err != nil {
		if errors.Is(err, qmp.ErrNoAgent) {
			return fail(errors.New("the guest agent does not answer"))
		}
		return fail(err)
	}
	k := d.cfg.Guest.Kill
	kpid, err := a.Exec(ctx, k[0], append(append([]string{}, k[1:]...), strconv.Itoa(pid)))
	if err != nil {
		return fail(fmt.Errorf("%s: %w", k[0], err))
	}
	var st qmp.ExecStatus
	err = wait.Until(ctx, execPoll, func(ctx context.Context) (bool, error) {
		var err error
		st, err = a.ExecStatus(ctx, kpid, qmp.DataLimit)
		return st.Exited, err
	})
	switch {
	case err != nil:
		return fail(fmt.Errorf("%s did not answer: %w", k[0], err))
	case st.ExitCode == nil || *st.ExitCode != 0:
		res, _ := execResult(st, qmp.DataLimit)
		return fail(fmt.Errorf("%s exited %d: %s", k[0], res.ExitCode, bytes.TrimSpace(res.Stderr)))
	}
	_, _ = a.ExecStatus(ctx, pid, qmp.DataLimit)
	return nil
}

// execResult decodes an ended command's status, keeping at most limit
// bytes of each stream.
func execResult(st qmp.ExecStatus, limit int) (hypervisor.ExecResult, error) {
	var res hypervisor.ExecResult
	switch {
	case st.ExitCode != nil:
		res.ExitCode = *st.ExitCode
	case st.Signal != nil:
		res.ExitCode = 128 + *st.Signal
	}
	var err error
	if res.Stdout, err = base64.StdEncoding.DecodeString(st.OutData); err != nil {
		return res, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpExec, "", "undecodable stdout: %v", err)
	}
	if res.Stderr, err = base64.StdEncoding.DecodeString(st.ErrData); err != nil {
		return res, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpExec, "", "undecodable stderr: %v", err)
	}
	res.StdoutTruncated, res.StderrTruncated = st.OutTruncated, st.ErrTruncated
	if len(res.Stdout) > limit {
		res.Stdout, res.StdoutTruncated = res.Stdout[:limit], true
	}
	if len(res.Stderr) > limit {
		res.Stderr, res.StderrTruncated = res.Stderr[:limit], true
	}
	return res, nil
}
