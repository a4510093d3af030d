package vboxmanage

import (
	"context"
	"errors"
	"strings"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/parser"
	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/runner"
)

// Status reads the VM's state from `list --long vms` (§3).
//
// That listing prints every VM's human-format details without taking any
// session lock, so Status can never make a concurrent operation fail
// (§3.6). showvminfo, which prints the same details for one VM, asks for
// a shared lock that on a stopped, unlocked VM is an exclusive one for as
// long as the command runs: polling it makes starts and restores by
// anyone else fail now and then, so the driver does not use it.
//
// Status takes no gate either: it may run while a restore of the same VM
// does, and report it restoring. One unreadable listing is retried, as
// are "The object is not ready" while a VM changes state and the refusals
// of a VBoxSVC that is still starting.
func (d *Driver) Status(ctx context.Context, vm string) (_ hypervisor.Status, err error) {
	ctx, end, err := d.begin(ctx, hypervisor.OpStatus, vm)
	if err != nil {
		return hypervisor.Status{}, err
	}
	defer end(&err)
	p, err := d.ready(ctx, hypervisor.OpStatus, vm)
	if err != nil {
		return hypervisor.Status{}, err
	}
	return d.status(ctx, p, hypervisor.OpStatus, vm)
}

// status reads one VM's state.
func (d *Driver) status(ctx context.Context, p *probe, op, vm string) (hypervisor.Status, error) {
	if vm == "" {
		return hypervisor.Status{}, hypervisor.NewError(hypervisor.CodeNotFound, op, vm, "no VM name given")
	}
	var entry parser.LongEntry
	unreadable := 0
	err := d.retryIf(ctx, op, vm, 0, func(err error) bool {
		var u unreadableError
		if errors.As(err, &u) && unreadable < 2 {
			unreadable++
			return true
		}
		return false
	}, func() error {
		res, err := d.listLong(ctx, p, op, vm)
		if err != nil {
			return err
		}
		entries := parser.ParseLongList(res.Stdout)
		if e, ok := parser.FindLong(entries, vm); ok {
			entry = e
			return nil
		}
		if len(entries) == 0 && hasContent(res.Stdout) {
			return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm,
				Message: "VBoxManage printed no VM details: " + excerpt(res.Stdout), Err: unreadableError{errors.New("unreadable listing")}}
		}
		return hypervisor.NewError(hypervisor.CodeNotFound, op, vm, "Could not find a registered machine named '%s'", vm)
	})
	if err != nil {
		return hypervisor.Status{}, err
	}
	return statusFrom(vm, entry, p.caps.Has(hypervisor.CapLockState)), nil
}

// listLong lists every VM's details. Concurrent status reads (the VMs of
// a busy host, each polled while it stops or restores) share listings:
// a read joins the next listing to start after it asked, never one
// already under way, so what it gets is never older than its own call
// (no staleness at all), and N reads at once cost at most two VBoxManage
// invocations, not N.
func (d *Driver) listLong(ctx context.Context, p *probe, op, vm string) (*runner.Result, error) {
	res, err := d.listing.Read(ctx, func(ctx context.Context) (*runner.Result, error) {
		// A listing run for others outlives its first reader's
		// cancellation, never the driver's: Close still kills it.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(d.root, cancel)()
		return p.run.Run(ctx, runner.Call{Args: []string{"list", "--long", "vms"}, Timeout: d.cfg.Timeouts.Command})
	})
	if err != nil {
		if ctx.Err() != nil && res == nil {
			return nil, hypervisor.FromContext(ctx, op, vm)
		}
		return res, d.failure(op, vm, err)
	}
	return res, nil
}

// hasContent reports output that should have parsed: anything but blank
// lines and the Linux wrapper's warning (a WARNING line and indented
// continuation lines).
func hasContent(b []byte) bool {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "WARNING:") || l[0] == ' ' {
			continue
		}
		return true
	}
	return false
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
