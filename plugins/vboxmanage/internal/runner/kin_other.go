//go:build !linux && !windows

package runner

import (
	"os"
	"os/exec"
)

// dieWithParent does nothing here: these systems have no parent-death
// signal. VBoxManage stays in the plugin's process group, which the host
// kills as one when the plugin dies.
func dieWithParent(*exec.Cmd) {}

// kin needs nothing more here.
type kin struct{}

func (*kin) adopt(*os.Process) {}
