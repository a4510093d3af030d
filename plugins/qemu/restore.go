package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qcow2"
)

// Restore reverts the VM's disk to a snapshot with qemu-img snapshot -a
// (§7). A snapshot that holds a running guest leaves the VM saved: the
// next start resumes it with -loadvm, which also loads its memory. The VM
// must have no process and its disk no other holder.
func (d *Driver) Restore(ctx context.Context, name, snapshot string) error {
	v, release, err := d.begin(ctx, hypervisor.OpRestore, name)
	if err != nil {
		return err
	}
	defer release()
	st, p := d.observe(ctx, v)
	switch {
	case p.pid != 0 && st.Power.IsOff():
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpRestore, name,
			"the guest is off but its QEMU process %d still holds the VM (on_poweroff = \"preserve\"): unlock the VM first", p.pid)
	case p.pid != 0 && st.Power == hypervisor.PowerStopping:
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpRestore, name, "QEMU process %d is still exiting", p.pid)
	case p.pid != 0:
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpRestore, name,
			"QEMU process %d has the VM %s; stop it first", p.pid, st.Raw)
	case st.Lock == hypervisor.LockLocked:
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpRestore, name,
			"the disk %s is held by %s", v.Disk, describeHolders(v))
	}
	if snapshot == "" {
		snapshot = loadRecord(v).Snapshot // §7.1
	}
	if _, err := d.findSnapshot(hypervisor.OpRestore, v, snapshot); err != nil {
		return err
	}
	return d.revert(ctx, hypervisor.OpRestore, v, snapshot)
}

// findSnapshot looks snapshot up in the VM's image.
func (d *Driver) findSnapshot(op string, v *vm, snapshot string) (qcow2.Snapshot, error) {
	snaps, err := qcow2.Snapshots(v.Disk)
	if err != nil {
		return qcow2.Snapshot{}, hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "read the snapshots of %s: %v", v.Disk, err)
	}
	if snapshot == "" {
		return qcow2.Snapshot{}, hypervisor.NewError(hypervisor.CodeNotFound, op, v.name,
			"the VM is at no snapshot: name one, or set snapshot in its [vms.%s] table", v.name)
	}
	s, ok := qcow2.Find(snaps, snapshot)
	if !ok {
		names := make([]string, len(snaps))
		for i, s := range snaps {
			names[i] = s.Name
		}
		have := "none"
		if len(names) > 0 {
			have = strings.Join(names, ", ")
		}
		return qcow2.Snapshot{}, hypervisor.NewError(hypervisor.CodeNotFound, op, v.name,
			"no snapshot %q in %s; it has: %s", snapshot, v.Disk, have)
	}
	return s, nil
}

// revert runs qemu-img snapshot -a and records the snapshot. qemu-img is
// killed when ctx ends; it raises the snapshot's reference counts before
// it switches the disk's tables and lowers the old ones after, so a kill
// leaves the disk as it was or reverted, with at most some leaked
// clusters.
func (d *Driver) revert(ctx context.Context, op string, v *vm, snapshot string) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Restore)
	defer cancel()
	d.mu.Lock()
	d.restores[v.name] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.restores, v.name)
		d.mu.Unlock()
	}()
	begun := time.Now()
	cmd := exec.CommandContext(ctx, d.cfg.QEMUImg, "snapshot", "-a", snapshot, v.Disk)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if cerr := hypervisor.FromContext(ctx, op, v.name); cerr != nil {
			return cerr
		}
		msg := lastLines(out.Bytes(), 2)
		if msg == "" {
			msg = silentExit(err)
		}
		code := hypervisor.CodeFailed
		if strings.Contains(msg, `Failed to get "write" lock`) {
			code = hypervisor.CodeLocked
		}
		return &hypervisor.Error{Code: code, Op: op, VM: v.name, Message: "qemu-img snapshot -a " + snapshot + ": " + msg, Err: err}
	}
	removeStale(v)
	if err := saveRecord(v, record{Snapshot: snapshot, Clean: true}); err != nil {
		return hypervisor.NewError(hypervisor.CodeFailed, op, v.name, "record the snapshot: %v", err)
	}
	d.log.Info("VM restored", "vm", v.name, "snapshot", snapshot, "took", time.Since(begun))
	return nil
}

// silentExit words how a tool that printed nothing ended: killed by a
// signal (by something other than the plugin, whose own kills come with
// the deadline's error), or an exit status.
func silentExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("qemu-img was killed by signal %d (%s) before it said anything, not by this plugin "+
				"(out of memory? an operator?); the disk is as it was or reverted: restore again", int(ws.Signal()), ws.Signal())
		}
		return fmt.Sprintf("qemu-img exited with status %d without saying why", ee.ExitCode())
	}
	return err.Error()
}
