package lifecycle

import (
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Path says how an operation reached its outcome.
type Path string

// The paths.
const (
	// PathNative: the driver's own complete cleanup, verified by status.
	PathNative Path = "native"
	// PathComposed: the core's ladder, release confirmation and restore,
	// on a driver that reports its session lock.
	PathComposed Path = "composed"
	// PathLegacy: the same steps on a driver that cannot report its lock
	// (a protocol 1 plugin): power-off, wait by polling, a fixed settle.
	PathLegacy Path = "legacy"
)

// OpStep is one thing an operation did: a rung of the stop ladder, a wait,
// an unlock, a restore, a check.
type OpStep struct {
	// Name says what, e.g. "stop acpi", "wait for release", "restore clean".
	Name string `json:"name"`
	// Deadline is the step's own time limit; zero for none.
	Deadline time.Duration `json:"deadline_ns,omitempty"`
	// Duration is how long it took.
	Duration time.Duration `json:"duration_ns"`
	// Outcome is what came of it: "off", "unlocked", "deadline passed",
	// "refused", "skipped", "done", "failed".
	Outcome string `json:"outcome"`
	// Attempts counts the calls made, retries of a locked session included.
	Attempts int `json:"attempts,omitempty"`
	// State is the VM's state when the step ended, as "power/lock".
	State string `json:"state,omitempty"`
	// Detail is the hypervisor's message or why the step was skipped.
	Detail string `json:"detail,omitempty"`
}

// OpReport is what an operation did, for the operator and for --json.
type OpReport struct {
	// Operation is "stop", "unlock", "restore", "cleanup", "ensure-stopped",
	// "start" or "reconcile".
	Operation string `json:"operation"`
	// VM and Plugin name the VM.
	VM     string `json:"vm"`
	Plugin string `json:"plugin"`
	// Path is how the outcome was reached.
	Path Path `json:"path"`
	// Initial is the state found, Final the state left.
	Initial *hypervisor.Status `json:"initial,omitempty"`
	Final   *hypervisor.Status `json:"final,omitempty"`
	// Started is when the operation began (after waiting for its lease).
	Started time.Time `json:"started"`
	// Steps lists, in order, each rung tried and each wait, unlock and
	// restore, with its duration and outcome.
	Steps []OpStep `json:"steps"`
	// Fallbacks names each place where the driver lacked something and the
	// core took another way, and why.
	Fallbacks []string `json:"fallbacks,omitempty"`
	// StatusCalls counts Status calls made while waiting for states.
	StatusCalls int `json:"status_calls"`
	// Duration is the whole operation's time.
	Duration time.Duration `json:"duration_ns"`
	// Quarantined is set when this operation's failure quarantined the VM.
	Quarantined bool `json:"quarantined,omitempty"`
	// Reconciled is set when a reconciliation found the VM left behind by
	// an earlier run and cleaned it.
	Reconciled bool `json:"reconciled,omitempty"`
	// LeftBy is the holder that died holding the VM's lease, when a
	// reconciliation found one.
	LeftBy *LeaseHolder `json:"left_by,omitempty"`
	// Error is the failure, if any.
	Error string `json:"error,omitempty"`
}

func (r *OpReport) add(s OpStep) { r.Steps = append(r.Steps, s) }

func (r *OpReport) fallback(why string) { r.Fallbacks = append(r.Fallbacks, why) }

// stateWord renders a status as "power/lock" for steps and logs.
func stateWord(st hypervisor.Status) string {
	return string(st.Power) + "/" + string(st.Lock)
}

// Progress is one live update of a running operation, for a terminal.
type Progress struct {
	// VM is the VM concerned.
	VM string
	// Step is the step under way.
	Step string
	// Elapsed is the time since the operation began.
	Elapsed time.Duration
	// State is the last state seen; zero until a status arrives.
	State hypervisor.Status
}
