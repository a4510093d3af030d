package host

import (
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/windows"
)

// ownGroup starts the plugin in a process group of its own, so that a
// Ctrl-C in the console reaches the host alone, which then shuts its
// plugins down in order.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: windows.CREATE_NEW_PROCESS_GROUP}
}

// tree is a plugin and the processes it starts, held in a job object:
// Windows puts every process the plugin starts into its job, and
// terminating the job ends them all.
type tree struct {
	proc *os.Process
	job  windows.Handle
}

func newTree(p *os.Process) *tree {
	t := &tree{proc: p}
	job, err := windows.CreateJobObject(nil, nil)
	if err != nil {
		return t
	}
	h, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE, false, uint32(p.Pid))
	if err == nil {
		if windows.AssignProcessToJobObject(job, h) == nil {
			t.job = job
		}
		_ = windows.CloseHandle(h)
	}
	if t.job == 0 {
		_ = windows.CloseHandle(job)
	}
	return t
}

// kill terminates the job, and the plugin in any case.
func (t *tree) kill() {
	if t == nil {
		return
	}
	if t.job != 0 {
		_ = windows.TerminateJobObject(t.job, 1)
	}
	_ = t.proc.Kill()
}

// release closes the job's handle.
func (t *tree) release() {
	if t != nil && t.job != 0 {
		_ = windows.CloseHandle(t.job)
		t.job = 0
	}
}
