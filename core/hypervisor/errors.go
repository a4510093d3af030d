package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Code classifies a driver error so that the core can decide what to do
// next: retry, escalate, give up or report. Codes survive the process
// boundary (§11).
type Code int

// The error codes. The zero value is CodeFailed so that an unclassified
// error is never mistaken for a specific one.
const (
	// CodeFailed is any failure the driver could not classify.
	CodeFailed Code = iota
	// CodeNotFound: the VM or snapshot does not exist.
	CodeNotFound
	// CodeLocked: the VM's session is held by someone else right now. It is
	// transient; the caller retries within its deadline.
	CodeLocked
	// CodeInvalidState: the VM is in a state that forbids the operation
	// (restore while running, ACPI while paused, guest operation while the
	// guest is not ready).
	CodeInvalidState
	// CodeUnsupported: the driver does not implement the operation or stop
	// method; it has not declared the matching capability.
	CodeUnsupported
	// CodeTimeout: the operation's deadline passed.
	CodeTimeout
	// CodeUnavailable: the hypervisor (or the plugin process serving it) is
	// not reachable: not installed, its service is down, the plugin died.
	CodeUnavailable
)

// The sentinel errors that errors.Is matches for each code. Driver errors
// built with NewError unwrap to these, on both sides of the wire.
var (
	ErrFailed       = errors.New("failed")
	ErrNotFound     = errors.New("not found")
	ErrLocked       = errors.New("locked by another session")
	ErrInvalidState = errors.New("invalid state")
	ErrUnsupported  = errors.New("not supported by this driver")
	ErrTimeout      = errors.New("timed out")
	ErrUnavailable  = errors.New("hypervisor unavailable")
)

var sentinels = map[Code]error{
	CodeFailed:       ErrFailed,
	CodeNotFound:     ErrNotFound,
	CodeLocked:       ErrLocked,
	CodeInvalidState: ErrInvalidState,
	CodeUnsupported:  ErrUnsupported,
	CodeTimeout:      ErrTimeout,
	CodeUnavailable:  ErrUnavailable,
}

var codeNames = map[Code]string{
	CodeFailed:       "failed",
	CodeNotFound:     "not_found",
	CodeLocked:       "locked",
	CodeInvalidState: "invalid_state",
	CodeUnsupported:  "unsupported",
	CodeTimeout:      "timeout",
	CodeUnavailable:  "unavailable",
}

// String returns the code's stable machine name, as used in JSON output.
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code(%d)", int(c))
}

// Sentinel returns the error errors.Is matches for code c.
func (c Code) Sentinel() error {
	if s, ok := sentinels[c]; ok {
		return s
	}
	return ErrFailed
}

// Retryable reports whether an operation that failed with c may succeed if
// simply tried again a little later.
func (c Code) Retryable() bool { return c == CodeLocked }

// Error is the error every driver operation returns. It names the operation
// and the VM, keeps the driver's own message for the operator, and unwraps
// to the sentinel of its Code and to its cause.
type Error struct {
	// Code classifies the failure.
	Code Code
	// Op is the contract operation, e.g. "restore".
	Op string
	// VM is the VM the operation was about; empty for driver-wide operations.
	VM string
	// Message is the driver's or hypervisor's own words, e.g. VirtualBox's
	// first error line. It is shown to the operator as it is.
	Message string
	// Err is the underlying cause, if any.
	Err error
}

// NewError returns an *Error with the given classification.
func NewError(code Code, op, vm, format string, args ...any) *Error {
	msg := format
	if len(args) > 0 {
		msg = fmt.Sprintf(format, args...)
	}
	return &Error{Code: code, Op: op, VM: vm, Message: msg}
}

// Error formats as `op "vm": what: message`, the words an operator reads.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
	}
	if e.VM != "" {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%q", e.VM)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Code.Sentinel().Error())
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Err != nil && !strings.Contains(e.Message, e.Err.Error()) {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap exposes both the code's sentinel and the cause to errors.Is/As.
func (e *Error) Unwrap() []error {
	s := e.Code.Sentinel()
	if e.Err != nil {
		return []error{s, e.Err}
	}
	return []error{s}
}

// CodeOf classifies any error: the code of the first *Error in its chain,
// CodeTimeout for a context deadline, CodeFailed for anything else. A nil
// error has no code; CodeOf(nil) returns CodeFailed and callers check nil
// first.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	// In a fixed order, so that an error wrapping two sentinels always
	// gets the same code.
	for _, c := range []Code{CodeNotFound, CodeLocked, CodeInvalidState, CodeUnsupported, CodeTimeout, CodeUnavailable} {
		if errors.Is(err, sentinels[c]) {
			return c
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return CodeTimeout
	}
	return CodeFailed
}

// IsNotFound reports whether err says the VM or snapshot does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// IsLocked reports whether err is a transient session-lock conflict.
func IsLocked(err error) bool { return errors.Is(err, ErrLocked) }

// IsUnsupported reports whether err says the driver lacks the operation.
func IsUnsupported(err error) bool { return errors.Is(err, ErrUnsupported) }

// Unsupported returns the error an optional operation answers when the
// driver does not implement it (§1.2).
func Unsupported(op, vm string) *Error {
	return &Error{Code: CodeUnsupported, Op: op, VM: vm}
}

// FromContext turns a context's end into a contract error: CodeTimeout for
// an exceeded deadline, CodeFailed for a cancellation. It returns nil while
// the context is live.
func FromContext(ctx context.Context, op, vm string) error {
	err := ctx.Err()
	if err == nil {
		return nil
	}
	code := CodeFailed
	if errors.Is(err, context.DeadlineExceeded) {
		code = CodeTimeout
	}
	return &Error{Code: code, Op: op, VM: vm, Err: err}
}
