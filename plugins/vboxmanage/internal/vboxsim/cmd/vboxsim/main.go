// Command vboxsim is the VBoxManage simulator's executable: tests build it,
// name it VBoxManage and point the driver at it. Its world lives in
// $VBOX_USER_HOME; see package vboxsim.
package main

import (
	"os"
	"os/user"
	"path/filepath"

	"github.com/sandboxhq/sandbox/plugins/vboxmanage/internal/vboxsim"
)

func main() {
	home := os.Getenv("VBOX_USER_HOME")
	if home == "" {
		home = filepath.Join(filepath.Dir(os.Args[0]), "vboxsim")
	}
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && name == "" {
		name = u.Username
	}
	os.Exit(vboxsim.Main(os.Args[1:], vboxsim.Env{
		Home: home, Stdout: os.Stdout, Stderr: os.Stderr, PID: os.Getpid(), HostUser: name,
	}))
}
