package lifecycle

import (
	"errors"
	"fmt"
	"time"
)

// LeaseHolder is the process that holds a VM's lease, or that held it when
// it died: what `sandbox vm list` shows and what a reconciliation reports.
type LeaseHolder struct {
	// Key is the VM's key, "plugin/name".
	Key string `json:"key"`
	// PID is the holder's process id.
	PID int `json:"pid"`
	// Command is the holder's command line.
	Command string `json:"command"`
	// Since is when it took the lease.
	Since time.Time `json:"since"`
}

func (h LeaseHolder) String() string {
	return fmt.Sprintf("pid %d (%s) since %s", h.PID, h.Command, h.Since.Format(time.RFC3339))
}

// ErrLeaseHeld is matched by the error of an operation that would not wait
// for another one holding the VM.
var ErrLeaseHeld = errors.New("the VM is in use by another operation")

// LeaseHeldError names who holds a VM that an operation found in use.
type LeaseHeldError struct {
	// Key is the VM's key.
	Key string
	// Holder is who holds it; nil when the leases cannot tell (another
	// goroutine of this process).
	Holder *LeaseHolder
}

func (e *LeaseHeldError) Error() string {
	if e.Holder == nil {
		return fmt.Sprintf("%s is in use by another operation of this process", e.Key)
	}
	return fmt.Sprintf("%s is in use by %s", e.Key, e.Holder)
}

// Unwrap makes errors.Is(err, ErrLeaseHeld) true.
func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }

// TryLeases is implemented by Leases that can take a lease without
// waiting, as a reconciliation needs: a VM with a live holder is in use,
// not left behind by a crash.
type TryLeases interface {
	// TryAcquire takes key if nobody holds it and returns the function that
	// frees it, and the record of a holder that died holding it (nil when
	// none did). When somebody holds it, the error is a *LeaseHeldError.
	TryAcquire(key string) (release func(), left *LeaseHolder, err error)
}

// TryAcquire implements TryLeases within this process.
func (l *localLeases) TryAcquire(key string) (func(), *LeaseHolder, error) {
	if release, ok := l.keys.TryLock(key); ok {
		return release, nil, nil
	}
	return nil, nil, &LeaseHeldError{Key: key}
}
