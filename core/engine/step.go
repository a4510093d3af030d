package engine

// Step is where a task is: one state of its step machine. A task moves
// forward through them; every failure or cancellation after the VM was
// taken passes through cleaning before the end.
type Step string

// The steps, in the order a task that succeeds goes through them.
const (
	// StepQueued: the task waits for a free VM of its profile.
	StepQueued Step = "queued"
	// StepPreparing: the VM is held (leased); it is checked not to be
	// quarantined and brought off and unlocked.
	StepPreparing Step = "preparing"
	// StepRestoring: the VM returns to its clean snapshot.
	StepRestoring Step = "restoring"
	// StepStarting: the VM waits for a start slot (max_starting), then
	// starts.
	StepStarting Step = "starting"
	// StepWaitingGuest: the guest is asked until it is ready.
	StepWaitingGuest Step = "waiting-guest"
	// StepCopying: the sample is copied into the guest.
	StepCopying Step = "copying"
	// StepAnalyzing: the analysis command runs.
	StepAnalyzing Step = "analyzing"
	// StepCollecting: the declared artifacts are copied out.
	StepCollecting Step = "collecting"
	// StepCleaning: the VM is stopped, unlocked and restored (complete
	// cleanup), whatever happened before.
	StepCleaning Step = "cleaning"
	// StepDone: the task ended and every step succeeded.
	StepDone Step = "done"
	// StepFailed: the task ended and a step failed (FailedStep says which).
	StepFailed Step = "failed"
	// StepCancelled: the run was interrupted; the task either never got a
	// VM or was stopped and its VM cleaned.
	StepCancelled Step = "cancelled"
)

// Final reports whether s ends a task.
func (s Step) Final() bool { return s == StepDone || s == StepFailed || s == StepCancelled }
