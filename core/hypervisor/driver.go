package hypervisor

import (
	"context"
	"time"
)

// Driver is the Hypervisor contract: every operation sandbox performs on a
// VM. The clauses cited as § are numbered in docs/contract.md.
//
// Rules that hold for every method:
//   - ctx bounds the call: when its deadline passes the method returns
//     promptly with CodeTimeout and leaves no hypervisor process running on
//     its behalf (§12).
//   - Errors are *Error values with the codes of §11; a VM that does not
//     exist is CodeNotFound for every method that takes one (§11.3).
//   - A Driver is safe for concurrent use; operations on different VMs may
//     run in parallel (§13). The core serializes operations on one VM, but a
//     driver must still not corrupt state if two arrive at once.
//   - Optional operations (those behind a capability) answer
//     CodeUnsupported when the capability is not declared, and never answer
//     CodeUnsupported when it is (§1.2). Embed Unimplemented to get those
//     answers for free.
type Driver interface {
	// Info returns the driver's identity and capabilities (§1). It is cheap
	// and may be called often; a driver probes its hypervisor at most once
	// and caches the result.
	Info(ctx context.Context) (Info, error)

	// ListVMs returns every VM the driver can operate, in a stable order
	// (§2). It never takes a session lock, so it is safe to call while other
	// operations run. Requires CapList.
	ListVMs(ctx context.Context) ([]VM, error)

	// Status returns the VM's current state (§3). It is read-only: it must
	// not take a session lock that could make a concurrent operation on the
	// same VM fail (§3.6).
	Status(ctx context.Context, vm string) (Status, error)

	// Start powers the VM on without a display (headless) and returns once
	// the hypervisor reports it starting or running, not when the guest OS
	// has booted (§4.1). Starting a running VM returns nil and changes
	// nothing (§4.2). A VM that is off but whose session is still locked
	// answers CodeLocked (§4.3).
	Start(ctx context.Context, vm string) error

	// Stop asks the hypervisor to stop the VM by the given method and returns
	// once the request was accepted (§5). It does not promise that the VM is
	// off on return: the caller confirms by state (§5.3). Stopping a VM that
	// is already off-like returns nil and sends nothing to the hypervisor
	// that could disturb it (§5.2), except StopEmergency on an off-like VM
	// whose session is still held: that kills the VM process still holding
	// it. A method without its capability answers CodeUnsupported (§5.4).
	Stop(ctx context.Context, vm string, method StopMethod) error

	// Unlock releases a session lock that outlived the VM process, waiting
	// within ctx for the hypervisor to finish tearing the session down (§6).
	// The VM must be off-like (CodeInvalidState otherwise, §6.1); an
	// unlocked VM returns nil at once (§6.2). After nil, Status reports
	// LockUnlocked (§6.3). Requires CapUnlock.
	Unlock(ctx context.Context, vm string) error

	// Restore returns the VM to a snapshot: the named one, or the current
	// snapshot when snapshot is empty (§7). The VM must be off-like and
	// unlocked: a running VM answers CodeInvalidState, a VM whose session
	// is still held answers CodeLocked (§7.2). An unknown snapshot, or no
	// snapshot at all, is CodeNotFound (§7.1). After nil, Status reports
	// the snapshot as CurrentSnapshot and an off-like state (§7.3).
	// Restoring twice is the same as once (§7.4). Requires CapRestore.
	Restore(ctx context.Context, vm, snapshot string) error

	// Cleanup is the driver's own complete cleanup: on nil the VM is off,
	// unlocked and, if req.Restore is set, restored to req.Snapshot (§8).
	// Cleaning a clean VM is a no-op (§8.2). Requires CapCleanup; without
	// it the core composes the same outcome from Stop, Unlock and Restore.
	Cleanup(ctx context.Context, vm string, req CleanupRequest) (CleanupResult, error)

	// CopyIn copies the host file hostPath to guestPath inside the running
	// guest (§9.1). Requires CapGuestCopyIn.
	CopyIn(ctx context.Context, vm, hostPath, guestPath string) error

	// Exec runs a command in the running guest and returns its exit code
	// and output (§9.2). A non-zero exit code is a result, not an error; a
	// command still running at req.Timeout (or when ctx ends) is killed and
	// answers CodeTimeout. A guest that cannot run commands yet answers
	// CodeInvalidState. Requires CapGuestExec.
	Exec(ctx context.Context, vm string, req ExecRequest) (ExecResult, error)

	// CopyOut copies guestPath from the running guest to the host file
	// hostPath (§9.3). Requires CapGuestCopyOut.
	CopyOut(ctx context.Context, vm, guestPath, hostPath string) error

	// Watch streams the VM's state: first its current Status, then one
	// value per change, until ctx ends or the driver can no longer watch,
	// when the channel is closed (§10). Requires CapWatch.
	Watch(ctx context.Context, vm string) (<-chan Status, error)
}

// CleanupRequest says what a complete cleanup must achieve.
type CleanupRequest struct {
	// Restore asks for a snapshot restore once the VM is off and unlocked.
	Restore bool `json:"restore"`
	// Snapshot is the snapshot to restore; empty means the current one.
	Snapshot string `json:"snapshot,omitempty"`
}

// CleanupResult is what a driver-native cleanup reports it did.
type CleanupResult struct {
	// Steps lists, in order, what the driver did; empty when the VM was
	// already clean.
	Steps []CleanupStep `json:"steps"`
}

// CleanupStep is one thing a native cleanup did, for the operator's report.
type CleanupStep struct {
	// Action names it, e.g. "poweroff", "wait-unlock", "restore clean".
	Action string `json:"action"`
	// Duration is how long it took.
	Duration time.Duration `json:"duration_ns"`
	// Outcome is what came of it, e.g. "done" or "failed".
	Outcome string `json:"outcome"`
}

// ExecRequest is a command to run in a guest.
type ExecRequest struct {
	// Path is the program to run, as the guest resolves it.
	Path string `json:"path"`
	// Args are the program's arguments, without the program itself.
	Args []string `json:"args,omitempty"`
	// Timeout bounds the command; zero means until ctx ends.
	Timeout time.Duration `json:"timeout,omitempty"`
	// MaxOutput bounds, in bytes, what the result keeps of each of stdout
	// and stderr (§9.5a); zero leaves the driver's own bound, and a
	// driver never keeps more than its own bound whatever is asked.
	MaxOutput int64 `json:"max_output,omitempty"`
}

// ExecResult is the outcome of a command that ran to completion.
type ExecResult struct {
	// ExitCode is the command's exit status.
	ExitCode int `json:"exit_code"`
	// Stdout and Stderr are the command's output, possibly truncated by the
	// driver to a bound it documents or the request's MaxOutput (§9.5a).
	Stdout []byte `json:"stdout"`
	Stderr []byte `json:"stderr"`
	// StdoutTruncated and StderrTruncated say that the command wrote more
	// than the result keeps: what is there is its beginning.
	StdoutTruncated bool `json:"stdout_truncated,omitempty"`
	StderrTruncated bool `json:"stderr_truncated,omitempty"`
}

// Limit is the bound on each of stdout and stderr for a request to a
// driver whose own bound is own: the request's MaxOutput when it asks for
// less, else own.
func (r ExecRequest) Limit(own int64) int64 {
	if r.MaxOutput > 0 && r.MaxOutput < own {
		return r.MaxOutput
	}
	return own
}

// Operation names, as they appear in Error.Op, logs and reports.
const (
	OpInfo      = "info"
	OpList      = "list"
	OpStatus    = "status"
	OpStart     = "start"
	OpStop      = "stop"
	OpUnlock    = "unlock"
	OpRestore   = "restore"
	OpCleanup   = "cleanup"
	OpCopyIn    = "copy-in"
	OpExec      = "exec"
	OpCopyOut   = "copy-out"
	OpWatch     = "watch"
	OpConfigure = "configure"
)
