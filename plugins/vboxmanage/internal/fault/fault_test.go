package fault

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		name    string
		stdout  string
		stderr  string
		exit    int
		code    hypervisor.Code
		message string
		symbol  string
	}{
		{
			name: "lock held for a session (modifyvm after shutdown) is locked",
			stderr: `VBoxManage: error: The machine 'centos7' is already locked for a session (or being unlocked)
VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine, callee nsISupports
VBoxManage: error: Context: "LockMachine(a->session, LockType_Write)" at line 507 of file VBoxManageModifyVM.cpp
`,
			exit: 1, code: hypervisor.CodeLocked, symbol: "VBOX_E_INVALID_OBJECT_STATE",
			message: "The machine 'centos7' is already locked for a session (or being unlocked)",
		},
		{
			name: "startvm on a locked machine (Windows, CRLF) is locked",
			stderr: "VBoxManage.exe: error: The machine 'win10-64-defender' is already locked by a session (or being locked or unlocked)\r\n" +
				"VBoxManage.exe: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine, callee IUnknown\r\n",
			exit: 1, code: hypervisor.CodeLocked, symbol: "VBOX_E_INVALID_OBJECT_STATE",
			message: "The machine 'win10-64-defender' is already locked by a session (or being locked or unlocked)",
		},
		{
			name:   "a pending lock request is locked",
			stderr: "VBoxManage: error: The machine 'x' already has a lock request pending\n",
			exit:   1, code: hypervisor.CodeLocked,
			message: "The machine 'x' already has a lock request pending",
		},
		{
			name: "object not ready during a transition is locked",
			stderr: `VBoxManage: error: The object is not ready
VBoxManage: error: Details: code E_ACCESSDENIED (0x80070005), callee nsISupports
VBoxManage: error: Context: "COMGETTER(RemoteUSBDevices)(ComSafeArrayAsOutParam(coll))" at line 2022 of file VBoxManageInfo.cpp
`,
			exit: 1, code: hypervisor.CodeLocked, symbol: "E_ACCESSDENIED", message: "The object is not ready",
		},
		{
			name:   "E_FAIL out of LockMachine is locked",
			stderr: "VBoxManage.exe: error: Code E_FAIL (0x80004005) - Unspecified error (extended info not available)\r\nVBoxManage.exe: error: Context: \"LockMachine(a->session, LockType_Write)\" at line 531 of file VBoxManageModifyVM.cpp\r\n",
			exit:   1, code: hypervisor.CodeLocked, symbol: "E_FAIL",
			message: "Code E_FAIL (0x80004005) - Unspecified error (extended info not available)",
		},
		{
			name: "unknown VM is not found",
			stderr: `VBoxManage: error: Could not find a registered machine named 'windows7'
VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, interface IVirtualBox, callee nsISupports
VBoxManage: error: Context: "FindMachine(Bstr(VMNameOrUuid).raw(), machine.asOutParam())" at line 2719 of file VBoxManageInfo.cpp
`,
			exit: 1, code: hypervisor.CodeNotFound, symbol: "VBOX_E_OBJECT_NOT_FOUND",
			message: "Could not find a registered machine named 'windows7'",
		},
		{
			name:   "restorecurrent without snapshots (stdout only) is not found",
			stdout: "This machine does not have any snapshots\n",
			exit:   1, code: hypervisor.CodeNotFound, message: "This machine does not have any snapshots",
		},
		{
			name:   "controlvm on a stopped VM is invalid state",
			stderr: "VBoxManage: error: Machine 'win10' is not currently running.\n",
			exit:   1, code: hypervisor.CodeInvalidState, message: "Machine 'win10' is not currently running.",
		},
		{
			name: "ACPI while paused is invalid state",
			stderr: `VBoxManage: error: Invalid machine state: Paused
VBoxManage: error: Details: code VBOX_E_INVALID_VM_STATE (0x80bb0002), component ConsoleWrap, interface IConsole, callee nsISupports
VBoxManage: error: Context: "PowerButton()" at line 1110 of file VBoxManageControlVM.cpp
`,
			exit: 1, code: hypervisor.CodeInvalidState, symbol: "VBOX_E_INVALID_VM_STATE", message: "Invalid machine state: Paused",
		},
		{
			name:   "restore of a running VM is invalid state",
			stdout: "Restoring snapshot 'clean' (0b7c9e2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d)\n",
			stderr: "VBoxManage: error: Cannot delete the current state of the running machine (machine state: Running)\nVBoxManage: error: Details: code VBOX_E_INVALID_VM_STATE (0x80bb0002), component SessionMachine, interface IMachine, callee nsISupports\n",
			exit:   1, code: hypervisor.CodeInvalidState, symbol: "VBOX_E_INVALID_VM_STATE",
			message: "Cannot delete the current state of the running machine (machine state: Running)",
		},
		{
			name:   "emergencystop with nothing to kill is invalid state, not locked",
			stderr: "VBoxManage: error: The machine 'x' is not locked by a session\nVBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine, callee nsISupports\n",
			exit:   1, code: hypervisor.CodeInvalidState, symbol: "VBOX_E_INVALID_OBJECT_STATE",
			message: "The machine 'x' is not locked by a session",
		},
		{
			name:   "emergencystop on a machine held by another client is locked",
			stderr: "VBoxManage: error: The machine 'x' does not have a VM process\nVBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap, interface IMachine, callee nsISupports\n",
			exit:   1, code: hypervisor.CodeLocked, message: "The machine 'x' does not have a VM process",
		},
		{
			name: "guest execution service not ready is invalid state",
			stderr: `VBoxManage: error: The guest execution service is not ready (yet)
VBoxManage: error: Details: code VBOX_E_IPRT_ERROR (0x80bb0005), component GuestSessionWrap, interface IGuestSession, callee nsISupports
`,
			exit: 1, code: hypervisor.CodeInvalidState, symbol: "VBOX_E_IPRT_ERROR",
			message: "The guest execution service is not ready (yet)",
		},
		{
			name: "VBoxSVC unreachable on Windows is unavailable",
			stderr: "VBoxManage.exe: error: Failed to create the VirtualBox object!\r\n" +
				"VBoxManage.exe: error: Code CO_E_SERVER_EXEC_FAILURE (0x80080005) - Server execution failed (extended info not available)\r\n" +
				"VBoxManage.exe: error: Most likely, the VirtualBox COM server is not running or failed to start.\r\n",
			exit: 1, code: hypervisor.CodeUnavailable, symbol: "CO_E_SERVER_EXEC_FAILURE",
			message: "Failed to create the VirtualBox object!",
		},
		{
			name:   "XPCOM settings directory not accessible is unavailable",
			stderr: "VBoxManage: error: Failed to initialize COM because the global settings directory '/home/ci/.config/VirtualBox' is not accessible!\n",
			exit:   1, code: hypervisor.CodeUnavailable,
			message: "Failed to initialize COM because the global settings directory '/home/ci/.config/VirtualBox' is not accessible!",
		},
		{
			name:   "broken COM registration is unavailable",
			stderr: "VBoxManage.exe: error: Failed to create a session object!\r\nVBoxManage.exe: error: Code REGDB_E_CLASSNOTREG (0x80040154) - Class not registered (extended info not available)\r\n",
			exit:   1, code: hypervisor.CodeUnavailable, symbol: "REGDB_E_CLASSNOTREG",
			message: "Failed to create a session object!",
		},
		{
			name:   "a wrapper that cannot run the binary is unavailable",
			stderr: "/usr/bin/VBoxManage: line 1: /usr/lib/virtualbox/VBoxManage: cannot execute binary file\n",
			exit:   126, code: hypervisor.CodeUnavailable,
			message: "/usr/bin/VBoxManage: line 1: /usr/lib/virtualbox/VBoxManage: cannot execute binary file",
		},
		{
			name:   "a VM process dying at startup is a plain failure",
			stdout: "Waiting for VM \"minikube\" to power on...\n",
			stderr: "VBoxManage: error: The virtual machine 'minikube' has terminated unexpectedly during startup with exit code 1 (0x1)\n" +
				"VBoxManage: error: Details: code NS_ERROR_FAILURE (0x80004005), component MachineWrap, interface IMachine\n",
			exit: 1, code: hypervisor.CodeFailed, symbol: "NS_ERROR_FAILURE",
			message: "The virtual machine 'minikube' has terminated unexpectedly during startup with exit code 1 (0x1)",
		},
		{
			name:   "VT-x missing with exit 0 is a failure",
			stderr: "VBoxManage.exe: error: VT-x is not available (VERR_VMX_NO_VMX)\r\n",
			exit:   0, code: hypervisor.CodeFailed, message: "VT-x is not available (VERR_VMX_NO_VMX)",
		},
		{
			name:   "progress failure keeps the message, not the bar",
			stderr: "0%...\nProgress state: E_FAIL\nVBoxManage.exe: error: Snapshot operation failed\nVBoxManage.exe: error: Code E_FAIL (0x80004005) - Unspecified error (extended info not available)\n",
			exit:   1, code: hypervisor.CodeFailed, symbol: "E_FAIL", message: "Snapshot operation failed",
		},
		{
			name:   "a syntax error is a failure",
			stderr: "VBoxManage: error: Unknown option: --bogus\n",
			exit:   2, code: hypervisor.CodeFailed, message: "Unknown option: --bogus",
		},
		{
			name:   "silence with a bad exit status names the last words",
			stderr: "0%...10%...\n",
			exit:   1, code: hypervisor.CodeFailed, message: "",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Classify(c.stdout, c.stderr, c.exit)
			assert.Equal(t, c.code, d.Code, "code")
			assert.Equal(t, c.message, d.Message, "message")
			if c.symbol != "" {
				assert.Equal(t, c.symbol, d.Symbol, "symbol")
			}
		})
	}
}

func TestHasError(t *testing.T) {
	assert.True(t, HasError("VBoxManage.exe: error: VT-x is not available (VERR_VMX_NO_VMX)\r\n"))
	assert.True(t, HasError("0%...\nVBoxManage: error: x\n"))
	assert.False(t, HasError("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%\n"))
	assert.False(t, HasError("VBoxManage: warning: Error getting stdout handle: VERR_NOT_IMPLEMENTED\n"))
	assert.False(t, HasError(""))
}

func FuzzClassify(f *testing.F) {
	f.Add("", "VBoxManage: error: The object is not ready\nVBoxManage: error: Details: code E_ACCESSDENIED (0x80070005)", 1)
	f.Add("This machine does not have any snapshots", "", 1)
	f.Add("", strings.Repeat("x: error: ", 10), 0)
	f.Fuzz(func(t *testing.T, stdout, stderr string, exit int) {
		d := Classify(stdout, stderr, exit)
		if d.Code < hypervisor.CodeFailed || d.Code > hypervisor.CodeUnavailable {
			t.Fatalf("code %v", d.Code)
		}
	})
}
