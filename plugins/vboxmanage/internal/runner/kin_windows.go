package runner

import (
	"os"
	"os/exec"
	"sync"
	"unsafe"

	"golang.org/x/sys/windows"
)

// dieWithParent does nothing at start on Windows: kin.adopt puts the
// process in the plugin's job.
func dieWithParent(*exec.Cmd) {}

// kin is a job object that kills its processes when its last handle
// closes: the plugin holds the only one, so VBoxManage dies with the
// plugin however the plugin dies.
type kin struct {
	once sync.Once
	job  windows.Handle
}

func (k *kin) adopt(p *os.Process) {
	k.once.Do(func() {
		job, err := windows.CreateJobObject(nil, nil)
		if err != nil {
			return
		}
		info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{
			BasicLimitInformation: windows.JOBOBJECT_BASIC_LIMIT_INFORMATION{
				LimitFlags: windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
			},
		}
		if _, err := windows.SetInformationJobObject(job, windows.JobObjectExtendedLimitInformation,
			uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
			_ = windows.CloseHandle(job)
			return
		}
		k.job = job
	})
	if k.job == 0 {
		return
	}
	h, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE, false, uint32(p.Pid))
	if err != nil {
		return
	}
	_ = windows.AssignProcessToJobObject(k.job, h)
	_ = windows.CloseHandle(h)
}
