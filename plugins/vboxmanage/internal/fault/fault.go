// Package fault reads what went wrong from VBoxManage's output and files it
// under the contract's error codes.
//
// VBoxManage reports errors as blocks of stderr lines prefixed with
// "VBoxManage: error: " ("VBoxManage.exe: error: " on Windows): the API's
// message first, then "Details: code <SYMBOL> (0x...)" and "Context: ..."
// lines whose line numbers and file names vary by build. Classification
// therefore matches message texts and symbolic codes, never the Context
// line, and keeps the first message line for the operator.
package fault

import (
	"regexp"
	"strings"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// Diagnosis is what one failed invocation said.
type Diagnosis struct {
	// Code is the contract's classification.
	Code hypervisor.Code
	// Message is the first message line without the program prefix, e.g.
	// "The machine 'x' is already locked for a session (or being
	// unlocked)"; the operator sees it as it is.
	Message string
	// Symbol is the COM/XPCOM code from the Details or Code line, e.g.
	// "VBOX_E_INVALID_OBJECT_STATE"; empty when none was printed.
	Symbol string
}

var (
	// errorLine matches the IPRT error prefix. The program name is
	// VBoxManage's short name, which is "VBoxManage" or "VBoxManage.exe"
	// unless someone renamed the binary, so any word will do.
	errorLine = regexp.MustCompile(`^\S+: error: ?(.*)$`)
	symbolRe  = regexp.MustCompile(`(?:Details: code|^Code) ([A-Z][A-Z0-9_]+) \(0x[0-9a-fA-F]+\)`)
)

// ErrorLines returns the messages of every "<prog>: error: " line in
// stderr, prefixes removed, in order.
func ErrorLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSuffix(l, "\r")
		if m := errorLine.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// HasError reports whether stderr holds an error line. VBoxManage has been
// seen to exit 0 after a fatal error (VT-x not available), so such a line
// means failure whatever the exit status.
func HasError(stderr string) bool {
	return len(ErrorLines(stderr)) > 0
}

// Classify files one failed invocation under a contract code. exitCode is
// the process's exit status; stdout matters because a few failures
// ("This machine does not have any snapshots") are printed there.
func Classify(stdout, stderr string, exitCode int) Diagnosis {
	errs := ErrorLines(stderr)
	d := Diagnosis{Message: firstMessage(errs, stdout, stderr)}
	for _, e := range errs {
		if m := symbolRe.FindStringSubmatch(e); m != nil {
			d.Symbol = m[1]
			break
		}
	}
	text := strings.Join(errs, "\n")
	if len(errs) == 0 {
		text = stderr
	}
	all := text + "\n" + stdout
	d.Code = code(all, text, d.Symbol, exitCode)
	return d
}

// firstMessage picks the line an operator should read: the first error
// line that is not a Details/Context/separator line, else the first error
// line at all, else the last words VBoxManage printed.
func firstMessage(errs []string, stdout, stderr string) string {
	for _, e := range errs {
		if e == "" || strings.HasPrefix(e, "Details:") || strings.HasPrefix(e, "Context:") || strings.HasPrefix(e, "--------") {
			continue
		}
		return e
	}
	if len(errs) > 0 {
		return errs[0]
	}
	for _, s := range []string{stderr, stdout} {
		ls := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
		for i := len(ls) - 1; i >= 0; i-- {
			if l := strings.TrimSpace(ls[i]); l != "" && !isProgress(l) {
				return l
			}
		}
	}
	return ""
}

// isProgress recognizes a progress bar ("0%...10%...") so it is never taken
// for a message.
func isProgress(l string) bool {
	return strings.HasPrefix(l, "0%") && strings.Trim(l, "0123456789%.") == ""
}

var (
	unavailableTexts = []string{
		"Failed to create the VirtualBox object",
		"Failed to create a session object",
		"Failed to initialize COM",
		"COM server is not running",
		"Could not find VirtualBox installation",
	}
	unavailableSymbols = map[string]bool{
		"CO_E_SERVER_EXEC_FAILURE": true,
		"E_NOINTERFACE":            true,
		"REGDB_E_CLASSNOTREG":      true,
	}
	notFoundTexts = []string{
		"Could not find a registered machine",
		"Could not find a snapshot",
		"does not have any snapshots",
	}
	// invalidStateTexts come before the lock texts: "is not locked by a
	// session" (emergencystop with nothing to kill) carries the lock error's
	// symbol but means the opposite.
	invalidStateTexts = []string{
		"Invalid machine state",
		"is not currently running",
		"is not running (currently",
		"Machine in invalid state",
		"Cannot delete the current state of the running machine",
		"while it is changing the state",
		"Cannot power down at this point",
		"guest execution service is not ready",
		"Session is not in started state",
		"Guest not running",
		"console is not powered up",
		"is not locked by a session",
	}
	lockedTexts = []string{
		"is already locked for a session",
		"is already locked by a session",
		"already has a lock request pending",
		"The object is not ready",
		"object functionality is limited",
		"session is busy",
		"was unlocked unexpectedly",
		"Failed to get a console object from the direct session",
		"does not have a VM process",
		"while it is locked",
	}
)

func code(all, errText, symbol string, exitCode int) hypervisor.Code {
	switch {
	case containsAny(all, unavailableTexts) || unavailableSymbols[symbol]:
		return hypervisor.CodeUnavailable
	case exitCode == 126 || exitCode == 127:
		// A shell's "cannot execute" / "not found": the wrapper script
		// could not run the real binary.
		return hypervisor.CodeUnavailable
	case symbol == "VBOX_E_OBJECT_NOT_FOUND" || containsAny(all, notFoundTexts):
		return hypervisor.CodeNotFound
	case containsAny(errText, invalidStateTexts) || symbol == "VBOX_E_INVALID_VM_STATE":
		return hypervisor.CodeInvalidState
	case containsAny(errText, lockedTexts),
		symbol == "VBOX_E_INVALID_OBJECT_STATE",
		symbol == "E_ACCESSDENIED",
		// A bare E_FAIL out of LockMachine has been seen on Windows hosts
		// while a session was going away.
		(symbol == "E_FAIL" || symbol == "NS_ERROR_FAILURE") && strings.Contains(errText, "LockMachine("):
		return hypervisor.CodeLocked
	}
	return hypervisor.CodeFailed
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
