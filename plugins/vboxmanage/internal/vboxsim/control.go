package vboxsim

import (
	"strings"
	"time"
)

// startvm: `startvm <vm>... [--type gui|headless|sdl|separate|emergencystop]`.
func (s *sim) startvm(args []string) int {
	var refs []string
	typ := "gui"
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--type" || a == "-type":
			if i+1 >= len(args) {
				return s.o.syntax("Missing value for option --type")
			}
			i++
			typ = args[i]
		case strings.HasPrefix(a, "--type="):
			typ = strings.TrimPrefix(a, "--type=")
		case a == "-E" || a == "--putenv":
			i++
		case strings.HasPrefix(a, "-"):
			return s.o.syntax("Unknown option: %s", a)
		default:
			refs = append(refs, a)
		}
	}
	if len(refs) == 0 {
		return s.o.syntax("VM name or UUID required")
	}
	for _, ref := range refs {
		var code int
		if strings.EqualFold(typ, "emergencystop") && s.o.ver.atLeast(5, 1) {
			code = s.emergencyStop(ref)
		} else {
			code = s.launch(ref, typ)
		}
		if code != 0 {
			return code
		}
	}
	return 0
}

func sessionName(typ string) (string, bool) {
	switch strings.ToLower(typ) {
	case "gui":
		return "GUI/Qt", true
	case "headless", "separate":
		return "headless", true
	case "sdl":
		return "SDL", true
	}
	return "", false
}

// launch is LaunchVMProcess: the machine must be unlocked; the session is
// "spawning" until the VM process runs the guest.
func (s *sim) launch(ref, typ string) int {
	name, ok := sessionName(typ)
	code := 0
	err := s.update(func(w *World) error {
		vm := w.Find(ref)
		switch {
		case vm == nil:
			code = s.o.notFound("startvm", ref)
		case !ok:
			code = s.o.launchError("Invalid session type: '"+typ+"'", invalidArg)
		case vm.Session.State != Unlocked:
			vm.shown()
			code = s.o.launchError("The machine '"+vm.Name+"' is already locked by a session (or being locked or unlocked)", invalidObjState)
		case !isOff(vm.State):
			code = s.o.launchError("The machine '"+vm.Name+"' is already locked by a session (or being locked or unlocked)", invalidObjState)
		default:
			vm.Session = Session{State: Spawning, Owner: OwnerClient, PID: s.env.PID}
		}
		return nil
	})
	if err != nil || code != 0 {
		return max(code, s.status(err))
	}
	s.o.println("Waiting for VM \"%s\" to power on...", ref)
	s.sleep(s.cfg.Timing.Start)
	failed := s.cfg.Faults.StartFailExit0
	err = s.update(func(w *World) error {
		vm := w.Find(ref)
		if vm == nil {
			return nil
		}
		if failed {
			vm.Session = Session{State: Unlocked}
			return nil
		}
		vm.bootNow(time.Now(), name)
		return nil
	})
	if err != nil {
		return s.status(err)
	}
	if failed {
		s.o.api(apiError{msg: "VT-x is not available (VERR_VMX_NO_VMX)", hr: s.o.failure(),
			component: "ConsoleWrap", iface: "IConsole", progress: true})
		return 0
	}
	s.o.println("VM \"%s\" has been successfully started.", ref)
	if s.cfg.Faults.StartExit1 {
		return 1
	}
	return 0
}

// emergencyStop kills the VM process that owns the machine; it refuses a
// machine that is unlocked or held by anything but a VM process.
func (s *sim) emergencyStop(ref string) int {
	code := 0
	err := s.update(func(w *World) error {
		vm := w.Find(ref)
		if vm == nil {
			code = s.o.notFound("startvm", ref)
			return nil
		}
		if w.Config.Faults.ExitBeforeKill && vm.Session.Owner == OwnerVM && !hasProcess(vm.State) {
			vm.Session = Session{State: Unlocked}
		}
		switch ss := vm.Session; {
		case ss.State == Unlocked:
			code = s.o.launchError("The machine '"+vm.Name+"' is not locked by a session", invalidObjState)
		case ss.Owner != OwnerVM:
			code = s.o.launchError("The machine '"+vm.Name+"' does not have a VM process", invalidObjState)
		default:
			now := time.Now()
			if hasProcess(vm.State) {
				vm.State, vm.StateChanged = "aborted", now
			}
			vm.ACPIAt, vm.StartedAt = time.Time{}, time.Time{}
			if d := w.Config.Timing.KillUnlock.D(); d > 0 {
				vm.Session = Session{State: Unlocking, Owner: OwnerVM, Name: ss.Name, Until: now.Add(d)}
			} else {
				vm.Session = Session{State: Unlocked}
			}
		}
		return nil
	})
	return max(code, s.status(err))
}

// controlvm: `controlvm <vm> acpipowerbutton|poweroff|pause|resume|savestate`.
// It shares the VM process's session; on an unlocked machine it locks it,
// finds no console and fails.
func (s *sim) controlvm(args []string) int {
	if len(args) < 2 {
		if len(args) == 1 {
			return s.o.syntax("Not enough parameters")
		}
		return s.o.syntax("VM name or UUID required")
	}
	ref, sub := args[0], strings.ToLower(args[1])
	switch sub {
	case "acpipowerbutton", "poweroff", "pause", "resume", "savestate":
	default:
		return s.o.syntax("Invalid parameter '%s'", args[1])
	}
	var took, console bool
	code := 0
	hang := false
	err := s.update(func(w *World) error {
		vm := w.Find(ref)
		if vm == nil {
			code = s.o.notFound("controlvm", ref)
			return nil
		}
		took, console, code = s.lockShared("controlvm", vm, false)
		if code != 0 || took || !console {
			return nil
		}
		consoleErr := func(ctx string) {
			code = 1
			s.o.api(apiError{msg: "Invalid machine state: " + s.o.enumName(vm.State), hr: invalidVMState,
				component: "ConsoleWrap", iface: "IConsole", context: ctx, file: "VBoxManageControlVM.cpp", line: 1110})
		}
		switch sub {
		case "acpipowerbutton":
			if vm.State != "running" && vm.State != "teleporting" && vm.State != "livesnapshotting" {
				consoleErr("PowerButton()")
				return nil
			}
			if !w.Config.Faults.ACPIIgnored && vm.ACPIAt.IsZero() {
				vm.ACPIAt = time.Now()
			}
		case "poweroff":
			if vm.State != "running" && vm.State != "paused" && vm.State != "gurumeditation" {
				consoleErr("PowerDown(progress.asOutParam())")
				return nil
			}
			vm.State, vm.StateChanged = "stopping", time.Now()
			hang = w.Config.Faults.HangPowerOff
		case "pause":
			if vm.State != "running" {
				consoleErr("Pause()")
				return nil
			}
			vm.State, vm.StateChanged = "paused", time.Now()
		case "resume":
			if vm.State != "paused" {
				consoleErr("Resume()")
				return nil
			}
			vm.State, vm.StateChanged = "running", time.Now()
		case "savestate":
			if vm.State != "running" && vm.State != "paused" {
				code = 1
				s.o.errorln("Machine in invalid state %d -- %s.", s.enumNumber(vm.State), longName(vm.State))
				return nil
			}
			vm.State, vm.StateChanged = "saving", time.Now()
		}
		return nil
	})
	if err != nil || code != 0 {
		return max(code, s.status(err))
	}
	if took || !console {
		if took {
			s.sleep(s.cfg.Timing.ReadHold)
			_ = s.release(ref)
		}
		dot := ""
		if s.o.ver.major >= 7 {
			dot = "."
		}
		s.o.errorln("Machine '%s' is not currently running%s", ref, dot)
		return 1
	}
	switch sub {
	case "poweroff":
		s.o.progress(s.cfg.Timing.PowerOff.D(), hang)
		err = s.update(func(w *World) error {
			if vm := w.Find(ref); vm != nil && vm.State == "stopping" {
				vm.powerDown(time.Now(), vm.unlockDelay(w.Config.Timing), w.Config.Timing.UnlockSeen)
			}
			return nil
		})
	case "savestate":
		s.o.progress(s.cfg.Timing.PowerOff.D(), false)
		err = s.update(func(w *World) error {
			if vm := w.Find(ref); vm != nil && vm.State == "saving" {
				vm.powerDown(time.Now(), vm.unlockDelay(w.Config.Timing), w.Config.Timing.UnlockSeen)
				vm.State = "saved"
			}
			return nil
		})
	}
	return s.status(err)
}

// enumNumber is the MachineState enum value printed by savestate's error;
// 7.0 inserted AbortedSaved=5 and moved everything after it up by one.
func (s *sim) enumNumber(state string) int {
	order := []string{"", "poweroff", "saved", "teleported", "aborted", "running", "paused", "gurumeditation",
		"teleporting", "livesnapshotting", "starting", "stopping", "saving", "restoring"}
	if s.o.ver.major >= 7 {
		order = append(order[:5], append([]string{"aborted-saved"}, order[5:]...)...)
	}
	for i, st := range order {
		if st == state {
			return i
		}
	}
	return 0
}

// modifyvm takes the write lock for a while and changes nothing: enough
// to collide with.
func (s *sim) modifyvm(args []string) int {
	return s.writeLocked("modifyvm", args, nil)
}

// discardstate takes the write lock and drops a saved state.
func (s *sim) discardstate(args []string) int {
	return s.writeLocked("discardstate", args, func(vm *VM) {
		if vm.State == "saved" || vm.State == "aborted-saved" {
			vm.State, vm.StateChanged = "poweroff", time.Now()
		}
	})
}

func (s *sim) writeLocked(cmd string, args []string, change func(*VM)) int {
	if len(args) == 0 {
		return s.o.syntax("VM name or UUID required")
	}
	ref := args[0]
	code := 0
	err := s.update(func(w *World) error {
		vm := w.Find(ref)
		switch {
		case vm == nil:
			code = s.o.notFound(cmd, ref)
		case vm.Session.State != Unlocked:
			code = s.o.lockedForSession(cmd, vm.Name, "Write")
		default:
			vm.Session = Session{State: Locked, Owner: OwnerClient, PID: s.env.PID}
		}
		return nil
	})
	if err != nil || code != 0 {
		return max(code, s.status(err))
	}
	s.sleep(s.cfg.Timing.WriteHold)
	err = s.update(func(w *World) error {
		if vm := w.Find(ref); vm != nil && change != nil {
			change(vm)
		}
		return nil
	})
	if rerr := s.release(ref); err == nil {
		err = rerr
	}
	return s.status(err)
}
