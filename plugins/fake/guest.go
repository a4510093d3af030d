package fake

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// The guest's filesystem is a directory of the host, <scratch_dir>/<vm>/
// disk-<n>, opened as an os.Root so that no guest path (with "..", a drive
// letter or a symlink planted inside) reaches anything outside it. A
// restore starts disk n+1: the snapshot's disk has none of the files the
// last run put there.

// CopyIn copies a host file into the running guest (§9.1), creating the
// guest directories on the way.
func (d *Driver) CopyIn(ctx context.Context, name, hostPath, guestPath string) error {
	if !d.caps.Has(hypervisor.CapGuestCopyIn) {
		return hypervisor.Unsupported(hypervisor.OpCopyIn, name)
	}
	ctx = d.honour(ctx)
	root, c, err := d.beginGuest(ctx, hypervisor.OpCopyIn, name, func(e *Entry) { e.Path = guestPath })
	if err != nil {
		return err
	}
	defer root.Close()
	if err := d.copyFault(name, func(u *faultsUsed, f Faults) (*int, int) { return &u.CopyIn, f.CopyInFailures }); err != nil {
		return c.done(hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name,
			"Copying %q to the guest failed: %v", guestPath, err))
	}
	err = copyIn(ctx, root, name, hostPath, guestPath)
	if err == nil {
		err = d.truncated(ViolationCopyInTruncates, truncateGuest(root, guestPath))
	}
	return c.done(err)
}

func copyIn(ctx context.Context, root *os.Root, name, hostPath, guestPath string) error {
	fail := func(format string, args ...any) error {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyIn, name, format, args...)
	}
	src, err := os.Open(hostPath)
	if err != nil {
		return fail("cannot read host file: %v", err)
	}
	defer src.Close()
	rel := guestRel(guestPath)
	if rel == "." {
		return fail("guest path %q is a directory", guestPath)
	}
	if dir := path.Dir(rel); dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return fail("cannot create guest directory %q: %v", dir, err)
		}
	}
	dst, err := root.Create(rel)
	if err != nil {
		return fail("cannot create guest file %q: %v", guestPath, err)
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail("copying to guest file %q: %v", guestPath, err)
	}
	return hypervisor.FromContext(ctx, hypervisor.OpCopyIn, name)
}

// CopyOut copies a file of the running guest to the host (§9.3). The host
// file's directory must exist.
func (d *Driver) CopyOut(ctx context.Context, name, guestPath, hostPath string) error {
	if !d.caps.Has(hypervisor.CapGuestCopyOut) {
		return hypervisor.Unsupported(hypervisor.OpCopyOut, name)
	}
	ctx = d.honour(ctx)
	root, c, err := d.beginGuest(ctx, hypervisor.OpCopyOut, name, func(e *Entry) { e.Path = guestPath })
	if err != nil {
		return err
	}
	defer root.Close()
	if err := d.copyFault(name, func(u *faultsUsed, f Faults) (*int, int) { return &u.CopyOut, f.CopyOutFailures }); err != nil {
		return c.done(hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name,
			"Copying %q from the guest failed: %v", guestPath, err))
	}
	err = copyOut(ctx, root, name, guestPath, hostPath)
	if err == nil {
		err = d.truncated(ViolationCopyOutTruncates, truncateFile(hostPath))
	}
	return c.done(err)
}

// errGuestIO is what a scripted copy fault says went wrong.
var errGuestIO = errors.New("VERR_SHARING_VIOLATION: the file is in use by another process")

// copyFault uses one failure of a counted copy fault, if any is left.
func (d *Driver) copyFault(name string, which func(*faultsUsed, Faults) (*int, int)) error {
	d.lock()
	defer d.unlock()
	v := d.vms[name]
	used, n := which(&v.st.Used, v.faults)
	if !useFault(used, n) {
		return nil
	}
	d.commitLocked()
	return errGuestIO
}

func copyOut(ctx context.Context, root *os.Root, name, guestPath, hostPath string) error {
	fail := func(format string, args ...any) error {
		return hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpCopyOut, name, format, args...)
	}
	src, err := root.Open(guestRel(guestPath))
	if err != nil {
		return fail("cannot open guest file %q: %v", guestPath, err)
	}
	defer src.Close()
	if fi, err := src.Stat(); err != nil || fi.IsDir() {
		return fail("guest path %q is not a file", guestPath)
	}
	dst, err := os.Create(hostPath)
	if err != nil {
		return fail("cannot create host file: %v", err)
	}
	// The guest file may grow while it is read: the bound is on what is
	// read, not on what Stat said.
	n, err := io.Copy(dst, io.LimitReader(src, MaxCopyOut+1))
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > MaxCopyOut {
		os.Remove(hostPath)
		return fail("guest file %q is larger than the %d bytes a copy-out takes; nothing was copied", guestPath, int64(MaxCopyOut))
	}
	if err != nil {
		return fail("copying guest file %q: %v", guestPath, err)
	}
	return hypervisor.FromContext(ctx, hypervisor.OpCopyOut, name)
}

// Exec runs one of the guest's built-in commands (§9.2; the list is in
// commands.go). A command still running at req.Timeout is killed and
// answers CodeTimeout, as does one whose ctx ends.
func (d *Driver) Exec(ctx context.Context, name string, req hypervisor.ExecRequest) (hypervisor.ExecResult, error) {
	if !d.caps.Has(hypervisor.CapGuestExec) || d.execHidden(ctx, name) {
		return hypervisor.ExecResult{}, hypervisor.Unsupported(hypervisor.OpExec, name)
	}
	ctx = d.honour(ctx)
	root, c, err := d.beginGuest(ctx, hypervisor.OpExec, name, func(e *Entry) {
		e.Command = append([]string{req.Path}, req.Args...)
	})
	if err != nil {
		return hypervisor.ExecResult{}, err
	}
	defer root.Close()
	runCtx := ctx
	if req.Timeout > 0 && !d.breaks(ViolationExecTimeoutIgnored) {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, req.Timeout)
		defer cancel()
	}
	sh := &shell{root: root}
	if !d.breaks(ViolationExecFloods) {
		limit := int(req.Limit(MaxOutput))
		sh.stdout.limit, sh.stderr.limit = limit, limit
	}
	code, err := sh.run(runCtx, req.Path, req.Args)
	if err != nil {
		if err = hypervisor.FromContext(ctx, hypervisor.OpExec, name); err == nil {
			err = hypervisor.NewError(hypervisor.CodeTimeout, hypervisor.OpExec, name,
				"command still running after %s; killed", req.Timeout)
		}
		return hypervisor.ExecResult{}, c.done(err)
	}
	if code != 0 && d.breaks(ViolationExecExitError) {
		return hypervisor.ExecResult{}, c.done(hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpExec, name,
			"command exited with status %d: %s", code, bytes.TrimSpace(sh.stderr.Bytes())))
	}
	res := hypervisor.ExecResult{
		ExitCode:        code,
		Stdout:          sh.stdout.Bytes(),
		Stderr:          sh.stderr.Bytes(),
		StdoutTruncated: sh.stdout.dropped,
		StderrTruncated: sh.stderr.dropped,
	}
	if d.breaks(ViolationExecNoStdout) {
		res.Stdout = nil
	}
	return res, c.done(nil)
}

// beginGuest starts a guest operation: the VM must be running with its
// guest ready (CodeInvalidState otherwise). It returns the guest's root.
func (d *Driver) beginGuest(ctx context.Context, op, name string, describe func(*Entry)) (*os.Root, *call, error) {
	v, err := d.begin(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	c := d.newCall(op, name)
	describe(&c.e)
	d.lock()
	now := time.Now()
	v.advance(now)
	switch {
	case v.st.Power != hypervisor.PowerRunning:
		err = d.guestOff(op, name)
	case !v.guestReady(now):
		err = hypervisor.NewError(hypervisor.CodeInvalidState, op, name,
			"The guest execution service is not ready (yet).")
	}
	disk := v.st.Disk
	if xerr := d.exitDuringLocked(v, c, op); xerr != nil {
		d.unlock()
		return nil, nil, xerr
	}
	d.unlock()
	if err != nil {
		return nil, nil, c.done(err)
	}
	root, err := d.guestRoot(name, disk)
	if err != nil {
		return nil, nil, c.done(hypervisor.NewError(hypervisor.CodeFailed, op, name, "guest filesystem: %v", err))
	}
	return root, c, nil
}

// guestRoot opens the VM's current disk, creating it, and removes the
// disks that earlier restores left behind.
func (d *Driver) guestRoot(name string, disk int) (*os.Root, error) {
	vmDir := filepath.Join(d.scratch, name)
	current := fmt.Sprintf("disk-%d", disk)
	if err := os.MkdirAll(filepath.Join(vmDir, current), 0o755); err != nil {
		return nil, err
	}
	if old, err := os.ReadDir(vmDir); err == nil {
		for _, e := range old {
			if e.Name() != current && strings.HasPrefix(e.Name(), "disk-") {
				os.RemoveAll(filepath.Join(vmDir, e.Name()))
			}
		}
	}
	return os.OpenRoot(filepath.Join(vmDir, current))
}

// guestRel maps a guest path, Unix or Windows style, to a path relative to
// the guest's root. ".." stops at the root as it does in any filesystem.
func guestRel(p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	if len(p) >= 2 && p[1] == ':' && ('a' <= p[0]|0x20 && p[0]|0x20 <= 'z') {
		p = p[2:]
	}
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}
