package runner

import (
	"os"
	"os/exec"
	"syscall"
)

// dieWithParent has the kernel kill VBoxManage when the plugin dies, even
// by SIGKILL, so that no power-off or guest program runs on for nobody.
// (The signal follows the thread that started the process; the Go runtime
// does not end threads that goroutines have not locked.)
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// kin needs nothing more on Linux.
type kin struct{}

func (*kin) adopt(*os.Process) {}
