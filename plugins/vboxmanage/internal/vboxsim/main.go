package vboxsim

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"
)

// Env is one invocation's surroundings.
type Env struct {
	// Home is the state directory (VBOX_USER_HOME).
	Home string
	// Stdout and Stderr receive the output.
	Stdout, Stderr io.Writer
	// PID identifies the invocation to the simulated client watcher; the
	// process's own pid.
	PID int
	// HostUser is guestcontrol's default user name.
	HostUser string
}

// sim is one invocation.
type sim struct {
	env Env
	cfg Config
	o   *out
	// flush writes out what is buffered for standard output.
	flush func()
	// faults consumed by this invocation
	garbage, accessDenied bool
}

// Main runs one VBoxManage invocation and returns its exit status.
func Main(args []string, env Env) int {
	recordArgv(env.Home, env.PID, args)
	// Standard output is buffered, as a C program's is on a pipe, and
	// flushed before every wait and at the end: a listing is then one
	// write, not one per line, and a command that hangs has printed all
	// it had to.
	stdout := bufio.NewWriter(env.Stdout)
	defer stdout.Flush()
	env.Stdout = stdout
	s := &sim{env: env, flush: func() { _ = stdout.Flush() }}
	cmd := ""
	if len(args) > 0 {
		cmd = strings.ToLower(args[0])
	}
	serviceDown, emptyVersion, hangVersion := false, false, false
	err := Update(env.Home, func(w *World) error {
		s.cfg = w.Config
		f := &w.Config.Faults
		switch cmd {
		case "--version", "-v", "-version":
			if f.HangVersion != 0 {
				hangVersion = true
				if f.HangVersion > 0 {
					f.HangVersion--
				}
			}
			if f.EmptyVersion > 0 && !hangVersion {
				f.EmptyVersion--
				emptyVersion = true
			}
		case "", "--help", "-h", "-?", "help":
		default:
			if f.ServiceDown != 0 {
				serviceDown = true
				if f.ServiceDown > 0 {
					f.ServiceDown--
				}
				return nil
			}
			if (cmd == "showvminfo" || cmd == "list") && f.Garbage > 0 {
				f.Garbage--
				s.garbage = true
			}
			if (cmd == "showvminfo" || cmd == "list" && longList(args)) && f.AccessDenied > 0 && !s.garbage {
				f.AccessDenied--
				s.accessDenied = true
			}
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(env.Stderr, "vboxsim: %v\n", err)
		return 3
	}
	s.o = newOut(s.cfg, env.Stdout, env.Stderr, s.flush)
	if s.cfg.Faults.Warnings && s.cfg.Host == "linux" {
		s.o.println("%s", wrapperWarning)
	}
	if serviceDown {
		return s.o.serviceDown()
	}
	if s.garbage {
		s.o.println("\x00\x01garbage %q {not a uuid}\n\"unterminated\nVMState=\nSnapshotName-=x\n=\n\"\" {}", time.Now().String())
		return 0
	}
	if len(args) == 1 && needsArgs[cmd] {
		// A command without its arguments prints its usage and fails.
		s.usage()
		return 1
	}
	switch cmd {
	case "":
		s.usage()
		return 0
	case "--help", "-h", "-?", "help":
		s.usage()
		return 0
	case "--version", "-v", "-version":
		if hangVersion {
			s.flush()
			time.Sleep(24 * time.Hour) // until killed, like a hung VBoxSVC call
			return 1
		}
		if emptyVersion {
			s.o.println("")
			return 0
		}
		s.o.println("%s", s.cfg.Version)
		return 0
	case "list":
		return s.list(args[1:])
	case "showvminfo":
		return s.showvminfo(args[1:])
	case "startvm":
		return s.startvm(args[1:])
	case "controlvm":
		return s.controlvm(args[1:])
	case "snapshot":
		return s.snapshot(args[1:])
	case "guestcontrol":
		return s.guestcontrol(args[1:])
	case "modifyvm":
		return s.modifyvm(args[1:])
	case "discardstate":
		return s.discardstate(args[1:])
	}
	return s.o.syntax("Invalid command '%s'", args[0])
}

var needsArgs = map[string]bool{
	"list": true, "showvminfo": true, "startvm": true, "controlvm": true, "snapshot": true,
	"guestcontrol": true, "modifyvm": true, "discardstate": true,
}

const wrapperWarning = `WARNING: The vboxdrv kernel module is not loaded. Either there is no module
         available for the current kernel (6.1.0-18-amd64) or it failed to
         load. Please recompile the kernel module and install it by

           sudo /sbin/vboxconfig

         You will not be able to start VMs until this problem is fixed.`

func (s *sim) usage() {
	s.o.println("Oracle VM VirtualBox Command Line Management Interface Version %s", strings.SplitN(s.cfg.Version, "r", 2)[0])
	s.o.println("Copyright (C) 2005-2024 Oracle and/or its affiliates")
	s.o.println("")
	s.o.println("Usage:")
	s.o.println("")
	s.o.println("VBoxManage [<general option>] <command>")
}

// update runs fn on the world; the simulator's own state errors end the
// invocation with exit status 3, as an initialisation failure would.
func (s *sim) update(fn func(w *World) error) error {
	return Update(s.env.Home, fn)
}

// errExit carries an exit status out of an update function after the
// message has been printed.
type errExit int

func (e errExit) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// status turns an update's outcome into an exit status.
func (s *sim) status(err error) int {
	if err == nil {
		return 0
	}
	if e, ok := err.(errExit); ok {
		return int(e)
	}
	fmt.Fprintf(s.env.Stderr, "vboxsim: %v\n", err)
	return 3
}

// lockShared models LockMachine(Shared) by this VBoxManage: on an unlocked
// machine it takes the machine exclusively (took is true and the caller
// must release it); on a machine held by a VM process it shares the
// session (console is true when the VM process has a console). Otherwise
// it returns the lock error's exit status, printed unless quiet.
func (s *sim) lockShared(cmd string, vm *VM, quiet bool) (took, console bool, exit int) {
	switch ss := vm.Session; {
	case ss.State == Unlocked:
		vm.Session = Session{State: Locked, Owner: OwnerClient, PID: s.env.PID}
		return true, false, 0
	case ss.State == Locked && ss.Owner == OwnerVM:
		return false, hasProcess(vm.State), 0
	case quiet:
		return false, false, 1
	case ss.State == Spawning:
		return false, false, s.o.lockPending(cmd, vm.Name, "Shared")
	default:
		vm.shown()
		return false, false, s.o.lockedForSession(cmd, vm.Name, "Shared")
	}
}

// release gives back a lock this invocation took.
func (s *sim) release(ref string) error {
	return s.update(func(w *World) error {
		if vm := w.Find(ref); vm != nil && vm.Session.Owner == OwnerClient && vm.Session.PID == s.env.PID {
			vm.Session = Session{State: Unlocked}
		}
		return nil
	})
}

// sleep waits d, as a command that takes that long does.
func (s *sim) sleep(d Duration) {
	if d > 0 {
		s.flush()
		time.Sleep(d.D())
	}
}

// longList reports `list --long`, which reads every VM's details as
// showvminfo does, and fails the same way while a VM changes state.
func longList(args []string) bool {
	for _, a := range args {
		if a == "-l" || a == "--long" {
			return true
		}
	}
	return false
}
