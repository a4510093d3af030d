package libvirt

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// cleanupBound bounds what a guest operation does after its caller's
// deadline to leave nothing behind: killing a timed-out command.
const cleanupBound = 2 * time.Second

// agentTimeout is how long libvirt waits for one agent command's answer,
// in seconds: the agent of a guest under load can be slow to answer, and
// libvirt calls a command it waited for in vain "not available for now".
const agentTimeout = 30

// agent is a guest operation's way to the domain's guest agent: each
// command is one qemu-agent-command call, libvirt's agent job, which does
// not wait for the domain's state change lock.
type agent struct {
	d   *Driver
	v   *vm
	op  string
	dom golibvirt.Domain
}

// run sends the agent command cmd with arguments args and decodes its
// "return" into ret (nil: ignored).
func (a *agent) run(ctx context.Context, cmd string, args, ret any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	timeout := int32(agentTimeout)
	if deadline, ok := ctx.Deadline(); ok {
		timeout = int32(min(agentTimeout, max(1, time.Until(deadline).Seconds()+1)))
	}
	var reply golibvirt.OptString
	err = a.d.conn.do(ctx, a.op, a.v.name, func(l *golibvirt.Libvirt) error {
		var err error
		reply, err = l.QEMUDomainAgentCommand(a.dom, string(body), timeout, 0)
		return err
	})
	if err != nil {
		return err
	}
	if ret == nil {
		return nil
	}
	if len(reply) == 0 {
		return fmt.Errorf("%s: the agent answered nothing", cmd)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(reply[0]), &r); err != nil {
		return fmt.Errorf("%s: undecodable answer: %w", cmd, err)
	}
	if err := json.Unmarshal(r.Return, ret); err != nil {
		return fmt.Errorf("%s: undecodable answer: %w", cmd, err)
	}
	return nil
}

// agentFor opens the way to the running domain's guest agent for a guest
// operation, waiting at most guest.ready_wait for it to answer (§9.4: a
// guest not ready yet answers invalid state). Guest operations on one VM
// take turns: the agent serves one command at a time.
func (d *Driver) agentFor(ctx context.Context, op, name string) (*agent, func(), error) {
	v, err := d.vmOf(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	release, err := d.acquire(ctx, &d.agents, op, name)
	if err != nil {
		return nil, nil, err
	}
	st, o, err := d.observe(ctx, op, v)
	if err != nil {
		release()
		return nil, nil, err
	}
	if st.Power != hypervisor.PowerRunning {
		release()
		return nil, nil, hypervisor.NewError(hypervisor.CodeInvalidState, op, name, "the domain is %s; guest operations need a running guest", st.Raw)
	}
	a := &agent{d: d, v: v, op: op, dom: o.dom}
	rctx, cancel := context.WithTimeout(ctx, d.cfg.Guest.ReadyWait)
	defer cancel()
	// Invalid state is libvirt's "not yet"; anything else ends the wait.
	_, err = wait.Retry(rctx, agentPoll, func(err error) bool { return hypervisor.CodeOf(err) == hypervisor.CodeInvalidState },
		func(rctx context.Context) error { return a.run(rctx, "guest-ping", nil, nil) })
	if err == nil {
		return a, release, nil
	}
	release()
	if cerr := hypervisor.FromContext(ctx, op, name); cerr != nil {
		return nil, nil, cerr
	}
	switch {
	case rctx.Err() != nil || hypervisor.CodeOf(err) == hypervisor.CodeInvalidState:
		// The wait ran out: a "not yet" ends it only at rctx's end or
		// just before, after a last ping. Whose end: the caller's deadline,
		// or guest.ready_wait?
		readyBy, _ := rctx.Deadline()
		if by, ok := ctx.Deadline(); ok && !by.After(readyBy) {
			return nil, nil, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: op, VM: name, Err: context.DeadlineExceeded}
		}
	case hypervisor.CodeOf(err) != hypervisor.CodeTimeout:
		return nil, nil, err
	}
	// libvirt's last word on the agent says why ("QEMU guest agent is not
	// connected"); a ping the deadline cut has none.
	msg := fmt.Sprintf("the guest agent did not answer within %s", d.cfg.Guest.ReadyWait)
	if !errors.Is(err, context.DeadlineExceeded) {
		msg += ": " + agentWord(messageOf(err))
	}
	return nil, nil, &hypervisor.Error{Code: hypervisor.CodeInvalidState, Op: op, VM: name, Message: msg, Err: err}
}

// agentBroken is libvirt's word for an agent channel it gave up on: its
// connection failed, or the agent sent what libvirt could not parse.
// libvirt clears it only when the guest's agent closes its port (an
// agent restarting in the guest) or the domain starts again.
const agentBroken = "not available due to an error"

// agentWord is libvirt's last word on the agent, with what to do when
// libvirt gave up on the channel.
func agentWord(msg string) string {
	if strings.Contains(msg, agentBroken) {
		msg += " (libvirt gave up on this domain's agent channel until the guest's agent reconnects or the domain " +
			"starts again: restart the guest's agent, or stop the VM and start it again; `sandbox vm cleanup` stops and restores it)"
	}
	return msg
}

// agentPoll paces the pings of an agent that is not ready yet.
var agentPoll = wait.Policy{Initial: 20 * time.Millisecond, Max: 250 * time.Millisecond, Factor: 2}

// guestFail turns an agent error into a contract error for what was being
// done, unless the caller's deadline explains it.
func guestFail(ctx context.Context, op, name, what string, err error) error {
	if cerr := hypervisor.FromContext(ctx, op, name); cerr != nil {
		return cerr
	}
	var he *hypervisor.Error
	if errors.As(err, &he) {
		return &hypervisor.Error{Code: he.Code, Op: op, VM: name, Message: what + ": " + he.Message, Err: err}
	}
	return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: name, Message: what + ": " + err.Error(), Err: err}
}

// CopyIn copies a host file into the guest (§9.1) in chunks of
// guest.chunk_size through guest-file-write.
func (d *Driver) CopyIn(ctx context.Context, name, hostPath, guestPath string) error {
	a, done, err := d.agentFor(ctx, hypervisor.OpCopyIn, name)
	if err != nil {
		return err
	}
	defer done()
	src, err := os.Open(hostPath)
	if err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name, "%v", err)
	}
	defer src.Close()
	var h int64
	if err := a.run(ctx, "guest-file-open", map[string]any{"path": guestPath, "mode": "w"}, &h); err != nil {
		return guestFail(ctx, hypervisor.OpCopyIn, name, "guest-file-open "+guestPath, err)
	}
	closeFile := func() error { return a.run(ctx, "guest-file-close", map[string]any{"handle": h}, nil) }
	buf := make([]byte, d.cfg.Guest.ChunkSize)
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			var w struct {
				Count int `json:"count"`
			}
			err := a.run(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(buf[:n])}, &w)
			if err == nil && w.Count != n {
				err = fmt.Errorf("the agent wrote %d of %d bytes", w.Count, n)
			}
			if err != nil {
				_ = closeFile()
				return guestFail(ctx, hypervisor.OpCopyIn, name, "guest-file-write "+guestPath, err)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			_ = closeFile()
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name, "read %s: %v", hostPath, rerr)
		}
	}
	if err := closeFile(); err != nil {
		return guestFail(ctx, hypervisor.OpCopyIn, name, "guest-file-close "+guestPath, err)
	}
	return nil
}

// CopyOut copies a guest file to the host (§9.3) in chunks of
// guest.chunk_size through guest-file-read. The host file appears whole
// or not at all.
func (d *Driver) CopyOut(ctx context.Context, name, guestPath, hostPath string) error {
	a, done, err := d.agentFor(ctx, hypervisor.OpCopyOut, name)
	if err != nil {
		return err
	}
	defer done()
	var h int64
	if err := a.run(ctx, "guest-file-open", map[string]any{"path": guestPath, "mode": "r"}, &h); err != nil {
		return guestFail(ctx, hypervisor.OpCopyOut, name, "guest-file-open "+guestPath, err)
	}
	closeFile := func() error { return a.run(ctx, "guest-file-close", map[string]any{"handle": h}, nil) }
	tmp, err := os.CreateTemp(filepath.Dir(hostPath), "."+filepath.Base(hostPath)+".part-*")
	if err != nil {
		_ = closeFile()
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "%v", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	for {
		var r struct {
			Count int    `json:"count"`
			Data  string `json:"buf-b64"`
			EOF   bool   `json:"eof"`
		}
		if err := a.run(ctx, "guest-file-read", map[string]any{"handle": h, "count": d.cfg.Guest.ChunkSize}, &r); err != nil {
			_ = closeFile()
			return guestFail(ctx, hypervisor.OpCopyOut, name, "guest-file-read "+guestPath, err)
		}
		data, err := base64.StdEncoding.DecodeString(r.Data)
		if err == nil && len(data) > d.cfg.Guest.ChunkSize {
			// The guest is not trusted: it answers at most what was asked.
			err = fmt.Errorf("the agent sent %d bytes for a read of %d", len(data), d.cfg.Guest.ChunkSize)
		}
		if err != nil {
			_ = closeFile()
			return guestFail(ctx, hypervisor.OpCopyOut, name, "guest-file-read "+guestPath, err)
		}
		if _, err := tmp.Write(data); err != nil {
			_ = closeFile()
			return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, "write %s: %v", hostPath, err)
		}
		if r.EOF || len(data) == 0 {
			break
		}
	}
	if err := closeFile(); err != nil {
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

// execStatus is guest-exec-status's answer.
type execStatus struct {
	Exited   bool   `json:"exited"`
	ExitCode *int   `json:"exitcode"`
	Signal   *int   `json:"signal"`
	OutData  string `json:"out-data"`
	ErrData  string `json:"err-data"`
	// The agent kept only part of the output.
	OutTruncated bool `json:"out-truncated"`
	ErrTruncated bool `json:"err-truncated"`
}

// Exec runs a command in the guest through guest-exec and polls
// guest-exec-status until it ends (§9.2). A command still running at its
// timeout, or when ctx ends, is killed in the guest with guest.kill and
// answers timeout. A command killed by a signal exits 128+signal, as a
// shell reports it. Each of stdout and stderr is cut to guest.max_output.
func (d *Driver) Exec(ctx context.Context, name string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	a, done, err := d.agentFor(ctx, hypervisor.OpExec, name)
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
	args := req.Args
	if args == nil {
		args = []string{}
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := a.run(rctx, "guest-exec", map[string]any{"path": req.Path, "arg": args, "capture-output": true}, &started); err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return hypervisor.ExecResult{}, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: hypervisor.OpExec, VM: name,
				Message: "the guest agent did not start " + req.Path + " before the command's deadline", Err: err}
		}
		return hypervisor.ExecResult{}, guestFail(ctx, hypervisor.OpExec, name, "guest-exec "+req.Path, err)
	}
	var (
		st   execStatus
		lost time.Time // since when libvirtd or the agent has not answered
	)
	err = wait.Until(rctx, execPoll, func(rctx context.Context) (bool, error) {
		var s execStatus
		err := a.run(rctx, "guest-exec-status", map[string]any{"pid": started.PID}, &s)
		// libvirtd gone away (restarted) is waited out, and so is the agent
		// it does not reach again at once, for guest.ready_wait: the command
		// runs on in the guest.
		switch {
		case err == nil:
			st, lost = s, time.Time{}
			return s.Exited, nil
		case rctx.Err() != nil:
			return false, nil // the command's deadline: it is killed below
		case (hypervisor.CodeOf(err) == hypervisor.CodeUnavailable || libvirtCode(err) == golibvirt.ErrAgentUnresponsive) &&
			(lost.IsZero() || time.Since(lost) < d.cfg.Guest.ReadyWait):
			if lost.IsZero() {
				lost = time.Now()
				d.log.Warn("libvirt or the guest agent does not answer; still waiting for the guest command", "vm", name, "error", err)
			}
			return false, nil
		}
		return false, guestFail(ctx, hypervisor.OpExec, name, "guest-exec-status", err)
	})
	if err == nil {
		return d.execResult(name, st, int(req.Limit(int64(d.cfg.Guest.MaxOutput))))
	}
	var he *hypervisor.Error
	if errors.As(err, &he) {
		return hypervisor.ExecResult{}, err
	}
	d.killGuest(a, name, started.PID)
	return hypervisor.ExecResult{}, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: hypervisor.OpExec, VM: name,
		Message: "the command " + req.Path + " was still running at its deadline; killed it in the guest", Err: rctx.Err()}
}

// execPoll paces the guest-exec-status polls of a running command.
var execPoll = wait.Policy{Initial: 2 * time.Millisecond, Max: 50 * time.Millisecond, Factor: 2}

// killGuest kills a guest command that outlived its deadline, and collects
// its status so that the agent forgets it.
func (d *Driver) killGuest(a *agent, name string, pid int) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupBound)
	defer cancel()
	k := d.cfg.Guest.Kill
	var started struct {
		PID int `json:"pid"`
	}
	if err := a.run(ctx, "guest-exec", map[string]any{"path": k[0], "arg": append(append([]string{}, k[1:]...), strconv.Itoa(pid))}, &started); err != nil {
		d.log.Warn("cannot kill a timed-out guest command", "vm", name, "pid", pid, "error", err)
		return
	}
	_ = wait.Until(ctx, killPoll, func(ctx context.Context) (bool, error) {
		var st execStatus
		err := a.run(ctx, "guest-exec-status", map[string]any{"pid": started.PID}, &st)
		return st.Exited, err
	})
	_ = a.run(ctx, "guest-exec-status", map[string]any{"pid": pid}, &execStatus{})
}

// killPoll paces the polls of the kill command's status.
var killPoll = wait.Policy{Initial: 5 * time.Millisecond}

// execResult decodes an ended command's status, cutting each output to
// limit (guest.max_output, or the request's max_output when smaller) and
// saying what was cut (§9.5).
func (d *Driver) execResult(name string, st execStatus, limit int) (hypervisor.ExecResult, error) {
	var res hypervisor.ExecResult
	switch {
	case st.ExitCode != nil:
		res.ExitCode = *st.ExitCode
	case st.Signal != nil:
		res.ExitCode = 128 + *st.Signal
	}
	res.StdoutTruncated, res.StderrTruncated = st.OutTruncated, st.ErrTruncated
	for _, o := range []struct {
		b64  string
		dst  *[]byte
		lost *bool
	}{{st.OutData, &res.Stdout, &res.StdoutTruncated}, {st.ErrData, &res.Stderr, &res.StderrTruncated}} {
		if max := base64.StdEncoding.EncodedLen(limit); len(o.b64) > max {
			o.b64, *o.lost = o.b64[:max], true
		}
		b, err := base64.StdEncoding.DecodeString(o.b64)
		if err != nil {
			return res, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpExec, name, "undecodable output from the guest agent: %v", err)
		}
		if len(b) > limit {
			b, *o.lost = b[:limit], true
		}
		*o.dst = b
	}
	return res, nil
}
