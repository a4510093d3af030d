package vboxsim

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// version is the simulated VirtualBox version, for text switches.
type version struct{ major, minor int }

func parseVersion(s string) version {
	var v version
	parts := strings.SplitN(s, ".", 3)
	if len(parts) >= 2 {
		v.major, _ = strconv.Atoi(parts[0])
		v.minor, _ = strconv.Atoi(parts[1])
	}
	return v
}

func (v version) atLeast(major, minor int) bool {
	return v.major > major || v.major == major && v.minor >= minor
}

// out prints the way the configured VBoxManage does.
type out struct {
	stdout, stderr io.Writer // line ends converted for the host
	rawOut, rawErr io.Writer // guest program output, passed through
	prog           string
	windows        bool
	ver            version
	// flush writes out buffered standard output before a wait.
	flush func()
}

func newOut(cfg Config, stdout, stderr io.Writer, flush func()) *out {
	o := &out{rawOut: stdout, rawErr: stderr, prog: "VBoxManage", ver: parseVersion(cfg.Version), flush: flush}
	o.stdout, o.stderr = stdout, stderr
	if cfg.Host == "windows" {
		o.windows, o.prog = true, "VBoxManage.exe"
		o.stdout, o.stderr = crlfWriter{stdout}, crlfWriter{stderr}
	}
	return o
}

// crlfWriter turns every LF into CRLF, as Windows VBoxManage prints.
type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	_, err := c.w.Write(bytes.ReplaceAll(p, []byte("\n"), []byte("\r\n")))
	return len(p), err
}

func (o *out) println(format string, args ...any) {
	fmt.Fprintf(o.stdout, format+"\n", args...)
}

func (o *out) errorln(format string, args ...any) {
	fmt.Fprintf(o.stderr, "%s: error: %s\n", o.prog, fmt.Sprintf(format, args...))
}

func (o *out) callee() string {
	if o.windows {
		return "IUnknown"
	}
	return "nsISupports"
}

// hresult is a COM status as VBoxManage prints it.
type hresult struct {
	name string
	code uint32
}

var (
	objectNotFound  = hresult{"VBOX_E_OBJECT_NOT_FOUND", 0x80bb0001}
	invalidVMState  = hresult{"VBOX_E_INVALID_VM_STATE", 0x80bb0002}
	iprtError       = hresult{"VBOX_E_IPRT_ERROR", 0x80bb0005}
	invalidObjState = hresult{"VBOX_E_INVALID_OBJECT_STATE", 0x80bb0007}
	accessDenied    = hresult{"E_ACCESSDENIED", 0x80070005}
	invalidArg      = hresult{"E_INVALIDARG", 0x80070057}
	unexpected      = hresult{"NS_ERROR_UNEXPECTED", 0x8000ffff}
)

// failure is E_FAIL, which XPCOM hosts print as NS_ERROR_FAILURE.
func (o *out) failure() hresult {
	if o.windows {
		return hresult{"E_FAIL", 0x80004005}
	}
	return hresult{"NS_ERROR_FAILURE", 0x80004005}
}

// apiError is one COM error block: message, Details and Context lines.
type apiError struct {
	msg       string
	hr        hresult
	component string // "" for basic error info (no component/interface)
	iface     string
	// progress errors come out of a progress object: no callee, and no
	// Context line unless context is set.
	progress bool
	context  string
	file     string
	line     int
}

func (o *out) api(e apiError) {
	for _, l := range strings.Split(e.msg, "\n") {
		o.errorln("%s", l)
	}
	details := fmt.Sprintf("Details: code %s (0x%08x)", e.hr.name, e.hr.code)
	if e.component != "" {
		details += fmt.Sprintf(", component %s, interface %s", e.component, e.iface)
	}
	if !e.progress {
		details += ", callee " + o.callee()
	}
	o.errorln("%s", details)
	if e.context != "" {
		o.errorln("Context: \"%s\" at line %d of file %s", e.context, e.line, e.file)
	}
}

// progress prints the progress bar over d, or stops after "0%..." and
// blocks forever when hang is set.
func (o *out) progress(d time.Duration, hang bool) {
	o.flush()
	fmt.Fprint(o.stderr, "0%...")
	for hang {
		// Blocks until killed; a bare select{} could be reported as a
		// deadlock by the runtime.
		time.Sleep(time.Hour)
	}
	for i := 1; i <= 10; i++ {
		time.Sleep(d / 10)
		if i == 10 {
			fmt.Fprint(o.stderr, "100%\n")
		} else {
			fmt.Fprintf(o.stderr, "%d%%...", i*10)
		}
	}
}

// Where a command looks its VM up, for the Context line of "not found".
var findContext = map[string]struct {
	expr, file string
	line       int
}{
	"showvminfo":   {"FindMachine(Bstr(VMNameOrUuid).raw(), machine.asOutParam())", "VBoxManageInfo.cpp", 2719},
	"controlvm":    {"FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())", "VBoxManageControlVM.cpp", 114},
	"startvm":      {"FindMachine(Bstr(pszVM).raw(), machine.asOutParam())", "VBoxManageMisc.cpp", 703},
	"snapshot":     {"FindMachine(Bstr(a->argv[0]).raw(), pMachine.asOutParam())", "VBoxManageSnapshot.cpp", 431},
	"guestcontrol": {"FindMachine(Bstr(pCtx->pszVmNameOrUuid).raw(), machine.asOutParam())", "VBoxManageGuestCtrl.cpp", 901},
	"modifyvm":     {"FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())", "VBoxManageModifyVM.cpp", 498},
	"discardstate": {"FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())", "VBoxManageMisc.cpp", 1302},
}

// Where a command takes its session lock, for the Context line of lock errors.
var lockContext = map[string]struct {
	file string
	line int
}{
	"showvminfo":   {"VBoxManageInfo.cpp", 3328},
	"controlvm":    {"VBoxManageControlVM.cpp", 133},
	"snapshot":     {"VBoxManageSnapshot.cpp", 442},
	"guestcontrol": {"VBoxManageGuestCtrl.cpp", 915},
	"modifyvm":     {"VBoxManageModifyVM.cpp", 507},
	"discardstate": {"VBoxManageMisc.cpp", 1310},
}

func (o *out) notFound(cmd, ref string) int {
	msg := fmt.Sprintf("Could not find a registered machine named '%s'", ref)
	if isUUIDRef(ref) {
		msg = fmt.Sprintf("Could not find a registered machine with UUID {%s}", trimBraces(ref))
	}
	c := findContext[cmd]
	o.api(apiError{msg: msg, hr: objectNotFound, component: "VirtualBoxWrap", iface: "IVirtualBox",
		context: c.expr, file: c.file, line: c.line})
	return 1
}

// lockedForSession is LockMachine's refusal: message 1 of FACTS §5.1.
func (o *out) lockedForSession(cmd, name, lockType string) int {
	c := lockContext[cmd]
	o.api(apiError{msg: fmt.Sprintf("The machine '%s' is already locked for a session (or being unlocked)", name),
		hr: invalidObjState, component: "MachineWrap", iface: "IMachine",
		context: fmt.Sprintf("LockMachine(a->session, LockType_%s)", lockType), file: c.file, line: c.line})
	return 1
}

// lockPending is LockMachine while a VM process is being spawned.
func (o *out) lockPending(cmd, name, lockType string) int {
	c := lockContext[cmd]
	o.api(apiError{msg: fmt.Sprintf("The machine '%s' already has a lock request pending", name),
		hr: invalidObjState, component: "MachineWrap", iface: "IMachine",
		context: fmt.Sprintf("LockMachine(a->session, LockType_%s)", lockType), file: c.file, line: c.line})
	return 1
}

func (o *out) launchContext() string {
	if o.ver.major < 6 {
		return "LaunchVMProcess(a->session, sessionType.raw(), env.raw(), progress.asOutParam())"
	}
	return "LaunchVMProcess(a->session, sessionType.raw(), ComSafeArrayAsInParam(aBstrEnv), progress.asOutParam())"
}

func (o *out) launchError(msg string, hr hresult) int {
	o.api(apiError{msg: msg, hr: hr, component: "MachineWrap", iface: "IMachine",
		context: o.launchContext(), file: "VBoxManageMisc.cpp", line: 726})
	return 1
}

func (o *out) serviceDown() int {
	o.errorln("Failed to create the VirtualBox object!")
	if o.windows {
		o.errorln("Code CO_E_SERVER_EXEC_FAILURE (0x80080005) - Server execution failed (extended info not available)")
	} else {
		o.errorln("Code NS_ERROR_ABORT (0x80004004) - Operation aborted (extended info not available)")
	}
	o.errorln("Most likely, the VirtualBox COM server is not running or failed to start.")
	return 1
}

// syntax prints a usage error: exit status 2.
func (o *out) syntax(format string, args ...any) int {
	o.errorln(format, args...)
	return 2
}

func isUUIDRef(s string) bool {
	s = trimBraces(s)
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
		} else if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return true
}

// enumName is the MachineState enum spelling used in API error texts.
func (o *out) enumName(state string) string {
	switch state {
	case "poweroff":
		return "PoweredOff"
	case "aborted-saved":
		return "Aborted-Saved"
	case "gurumeditation":
		if o.ver.major >= 7 {
			return "GuruMeditation"
		}
		return "Stuck"
	case "livesnapshotting":
		return "LiveSnapshotting"
	case "onlinesnapshotting":
		return "OnlineSnapshotting"
	case "restoringsnapshot":
		return "RestoringSnapshot"
	case "deletingsnapshot":
		return "DeletingSnapshot"
	case "deletingsnapshotlive":
		return "DeletingSnapshotOnline"
	case "deletingsnapshotlivepaused":
		return "DeletingSnapshotPaused"
	case "settingup":
		return "SettingUp"
	case "teleportingpausedvm":
		return "TeleportingPausedVM"
	case "teleportingin":
		return "TeleportingIn"
	}
	if state == "" {
		return "Null"
	}
	return strings.ToUpper(state[:1]) + state[1:]
}

// longName is the human-format state name.
func longName(state string) string {
	switch state {
	case "poweroff":
		return "powered off"
	case "gurumeditation":
		return "guru meditation"
	case "livesnapshotting":
		return "live snapshotting"
	case "onlinesnapshotting":
		return "online snapshotting"
	case "snapshotting":
		return "offline snapshotting"
	case "teleportingin":
		return "teleporting (incoming)"
	case "teleportingpausedvm":
		return "teleporting paused vm"
	case "deletingsnapshotlive":
		return "deleting snapshot live"
	case "deletingsnapshotlivepaused":
		return "deleting snapshot live paused"
	case "deletingsnapshot":
		return "deleting snapshot"
	case "restoringsnapshot":
		return "restoring snapshot"
	case "settingup":
		return "setting up"
	}
	return state
}
