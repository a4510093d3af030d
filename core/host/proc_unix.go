//go:build unix

package host

import (
	"os"
	"os/exec"
	"syscall"
)

// ownGroup makes the plugin lead a process group of its own: everything it
// starts joins the group, and the group is killed as one. The plugin is
// also out of the terminal's foreground group, so a Ctrl-C reaches the
// host alone, which then shuts its plugins down in order.
func ownGroup(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} }

// tree is a plugin's process group.
type tree struct{ pgid int }

func newTree(p *os.Process) *tree { return &tree{pgid: p.Pid} }

// kill kills every process of the group.
func (t *tree) kill() {
	if t != nil && t.pgid > 0 {
		_ = syscall.Kill(-t.pgid, syscall.SIGKILL)
	}
}

// release forgets the group: its id may be reused once it is empty.
func (t *tree) release() {
	if t != nil {
		t.pgid = 0
	}
}
