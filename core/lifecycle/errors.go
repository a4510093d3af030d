package lifecycle

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// ErrQuarantined is matched by the error for a VM that a failed cleanup
// took out of service; only a successful cleanup by an operator brings it
// back.
var ErrQuarantined = errors.New("VM is quarantined")

// StuckError is a VM that did not reach the wanted state past every rung
// and deadline: it names the VM, what was tried and the last word from the
// hypervisor. It unwraps to hypervisor.ErrTimeout (or the code of the last
// error when that was not a deadline).
type StuckError struct {
	// VM is the VM's name.
	VM string
	// Want is the state that was not reached, e.g. "off" or "unlocked".
	Want string
	// Tried lists the rungs and actions tried, in order.
	Tried []string
	// State is the last state seen.
	State string
	// Last is the last error the hypervisor returned, if any.
	Last error
	// Code classifies the failure; CodeTimeout when deadlines ran out.
	Code hypervisor.Code
}

func (e *StuckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "VM %q did not become %s", e.VM, e.Want)
	if e.State != "" {
		fmt.Fprintf(&b, " (last seen %s)", e.State)
	}
	if len(e.Tried) > 0 {
		fmt.Fprintf(&b, " after trying %s", strings.Join(e.Tried, ", "))
	}
	if e.Last != nil {
		fmt.Fprintf(&b, "; last hypervisor message: %v", e.Last)
	}
	return b.String()
}

// Unwrap exposes the code's sentinel and the last hypervisor error.
func (e *StuckError) Unwrap() []error {
	out := []error{e.Code.Sentinel()}
	if e.Last != nil {
		out = append(out, e.Last)
	}
	return out
}

// QuarantineError is returned for an operation refused because the VM is
// quarantined.
type QuarantineError struct {
	// VM is the VM's name.
	VM string
	// Reason is why it was quarantined.
	Reason string
	// Since is when.
	Since time.Time
}

func (e *QuarantineError) Error() string {
	return fmt.Sprintf("VM %q is quarantined since %s: %s; fix it, then run `sandbox vm cleanup %s` to bring it back",
		e.VM, e.Since.Format(time.RFC3339), e.Reason, e.VM)
}

// Unwrap makes errors.Is(err, ErrQuarantined) true.
func (e *QuarantineError) Unwrap() error { return ErrQuarantined }

// QuarantineFailedError is a failed cleanup whose VM could not be
// quarantined (a damaged quarantine file, a read-only state directory):
// the VM is dirty and nothing keeps it out of service, so the operator
// must step in.
type QuarantineFailedError struct {
	// VM is the VM's name.
	VM string
	// Err is the cleanup's failure.
	Err error
	// Quarantine is why the quarantine could not be recorded.
	Quarantine error
}

func (e *QuarantineFailedError) Error() string {
	return fmt.Sprintf("%v; and VM %q could not be quarantined (%v): keep it out of service yourself until "+
		"`sandbox vm cleanup %s` succeeds", e.Err, e.VM, e.Quarantine, e.VM)
}

// Unwrap exposes the cleanup's failure and the quarantine's.
func (e *QuarantineFailedError) Unwrap() []error { return []error{e.Err, e.Quarantine} }
