package libvirt

import (
	"errors"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// codes maps libvirt's error numbers (virErrorNumber) onto the contract's
// error classes; docs/libvirt.md has the table with the texts seen. A
// number not listed is failed, with libvirt's words.
var codes = map[golibvirt.ErrorNumber]hypervisor.Code{
	// "Domain not found: no domain with matching name 'x'"
	golibvirt.ErrNoDomain: hypervisor.CodeNotFound,
	// "Domain snapshot not found: no domain snapshot with matching name 'x'"
	golibvirt.ErrNoDomainSnapshot: hypervisor.CodeNotFound,
	// "Requested operation is not valid: domain is already running",
	// "... domain is not running"
	golibvirt.ErrOperationInvalid: hypervisor.CodeInvalidState,
	// "Timed out during operation: cannot acquire state change lock (held
	// by monitor=remoteDispatchDomainSuspend)": another job holds the
	// domain; it is transient, so locked.
	golibvirt.ErrOperationTimeout: hypervisor.CodeLocked,
	// "Guest agent is not responding: QEMU guest agent is not connected":
	// the guest is not ready for guest operations (§9.4).
	golibvirt.ErrAgentUnresponsive: hypervisor.CodeInvalidState,
	// "Guest agent is not responding: Guest agent not available for now"
	golibvirt.ErrAgentUnsynced: hypervisor.CodeInvalidState,
	// "Timed out during operation: ... agent command"
	golibvirt.ErrAgentCommandTimeout: hypervisor.CodeTimeout,
	// "Cannot recv data: Connection reset by peer": libvirtd went away.
	golibvirt.ErrRPC:       hypervisor.CodeUnavailable,
	golibvirt.ErrNoConnect: hypervisor.CodeUnavailable,
}

// lockedTexts are libvirt's words, inside errors of other numbers, for a
// domain whose disk another process holds: QEMU refused to start on it.
var lockedTexts = []string{`Failed to get "write" lock`, "Is another process using the image", "Failed to get shared \"write\" lock"}

// classify turns an error of a libvirt call into a contract error, keeping
// libvirt's message as it is: it is what an operator searches for.
func classify(op, vm string, err error) error {
	var le golibvirt.Error
	if !errors.As(err, &le) {
		return &hypervisor.Error{Code: hypervisor.CodeFailed, Op: op, VM: vm, Message: err.Error(), Err: err}
	}
	return &hypervisor.Error{Code: codeOf(le), Op: op, VM: vm, Message: le.Message, Err: err}
}

// codeOf is the contract's class of a libvirt error.
func codeOf(le golibvirt.Error) hypervisor.Code {
	if c, ok := codes[golibvirt.ErrorNumber(le.Code)]; ok {
		return c
	}
	for _, t := range lockedTexts {
		if strings.Contains(le.Message, t) {
			return hypervisor.CodeLocked
		}
	}
	return hypervisor.CodeFailed
}

// libvirtCode is the libvirt error number of err, or 0.
func libvirtCode(err error) golibvirt.ErrorNumber {
	var le golibvirt.Error
	if errors.As(err, &le) {
		return golibvirt.ErrorNumber(le.Code)
	}
	return 0
}
