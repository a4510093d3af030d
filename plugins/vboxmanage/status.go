package vboxmanage

import (
	"context"
	"errors"
	"strings"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/parser"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/runner"
)

// Status reads the VM's state with `showvminfo --machinereadable` (§3).
//
// showvminfo asks for a shared session lock. On a VM whose session is held
// (by its VM process, or by one still exiting) that request shares or
// fails harmlessly; on a stopped, unlocked VM it holds the machine
// exclusively for the few milliseconds the command runs. §3.6 is met by
// ordering: Status holds the VM's gate, so none of the driver's own
// lock-taking commands (start, restore, stop) runs while it does, and the
// lock is gone when Status returns. Operations that only need to know
// whether a VM runs use the lock-free `list runningvms` instead.
//
// "The object is not ready" (E_ACCESSDENIED), which showvminfo answers
// while a VM changes state, is retried, as is one unreadable dump.
func (d *Driver) Status(ctx context.Context, vm string) (hypervisor.Status, error) {
	p, err := d.ready(ctx, hypervisor.OpStatus, vm)
	if err != nil {
		return hypervisor.Status{}, err
	}
	release, err := d.lock(ctx, hypervisor.OpStatus, vm, true)
	if err != nil {
		return hypervisor.Status{}, err
	}
	defer release()
	return d.status(ctx, p, hypervisor.OpStatus, vm)
}

// status is Status for callers that hold the VM's gate.
func (d *Driver) status(ctx context.Context, p *probe, op, vm string) (hypervisor.Status, error) {
	ref, err := d.ref(ctx, p, op, vm)
	if err != nil {
		return hypervisor.Status{}, err
	}
	var info *parser.VMInfo
	unreadable := 0
	err = d.retryIf(ctx, op, vm, 0, func(err error) bool {
		var u unreadableError
		if errors.As(err, &u) && unreadable < 2 {
			unreadable++
			return true
		}
		return false
	}, func() error {
		res, err := d.run(ctx, p, op, vm, runner.Call{Args: []string{"showvminfo", ref, "--machinereadable"}, Timeout: d.cfg.Timeouts.Command})
		if err != nil {
			return err
		}
		info, err = parser.ParseVMInfo(res.Stdout)
		if err != nil {
			return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm,
				Message: "VBoxManage printed no machine-readable state: " + excerpt(res.Stdout), Err: unreadableError{err}}
		}
		return nil
	})
	if err != nil {
		return hypervisor.Status{}, err
	}
	return statusFrom(vm, info, p.caps.Has(hypervisor.CapLockState)), nil
}

// unreadableError marks output that parsed as nothing; VBoxManage rarely
// prints such junk twice in a row.
type unreadableError struct{ err error }

func (u unreadableError) Error() string { return u.err.Error() }
func (u unreadableError) Unwrap() error { return u.err }

// excerpt shows the start of unexpected output in an error message.
func excerpt(b []byte) string {
	s := strings.ToValidUTF8(string(b), "?")
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	if strings.TrimSpace(s) == "" {
		return "(nothing)"
	}
	return strings.Join(strings.Fields(s), " ")
}

// running reports, without taking any session lock, whether `list
// runningvms` shows vm: running, paused or teleporting, with a VM process.
// Not shown does not mean off: starting, stopping and stuck VMs are not
// listed either.
func (d *Driver) running(ctx context.Context, p *probe, op, vm string) (bool, error) {
	entries, err := d.list(ctx, p, op, vm, "runningvms")
	if err != nil {
		return false, err
	}
	id := strings.TrimSuffix(strings.TrimPrefix(vm, "{"), "}")
	for _, e := range entries {
		if e.Name == vm || strings.EqualFold(e.UUID, id) {
			return true, nil
		}
	}
	return false, nil
}
