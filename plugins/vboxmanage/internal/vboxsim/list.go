package vboxsim

import (
	"slices"
	"strings"
)

// list: `list [--long|-l] [--sorted|-s] vms|runningvms`. It takes no
// session lock, so it never collides with anything.
func (s *sim) list(args []string) int {
	long, sorted, what := false, false, ""
	for _, a := range args {
		switch a {
		case "-l", "--long":
			long = true
		case "-s", "--sorted":
			sorted = true
		default:
			if strings.HasPrefix(a, "-") {
				return s.o.syntax("Unknown option: %s", a)
			}
			if what != "" {
				return s.o.syntax("Too many parameters")
			}
			what = a
		}
	}
	if what == "" {
		return s.o.syntax("Missing subcommand for \"list\"")
	}
	if what != "vms" && what != "runningvms" {
		return s.o.syntax("Unknown subcommand \"%s\"", what)
	}
	var vms []VM
	err := s.update(func(w *World) error {
		for _, vm := range w.VMs {
			if what == "runningvms" && !listedAsRunning(vm.State) {
				continue
			}
			vms = append(vms, *vm)
			if long && !w.Config.Faults.HideSessionName {
				vm.shown()
			}
		}
		return nil
	})
	if err != nil {
		return s.status(err)
	}
	if sorted {
		slices.SortStableFunc(vms, func(a, b VM) int { return strings.Compare(a.Name, b.Name) })
	}
	for i, vm := range vms {
		name := vm.Name
		if vm.Inaccessible {
			name = "<inaccessible>"
		}
		if long {
			if i > 0 {
				s.o.println("")
			}
			if s.accessDenied && i == len(vms)-1 {
				s.o.api(apiError{msg: "The object is not ready", hr: accessDenied,
					context: "COMGETTER(RemoteUSBDevices)(ComSafeArrayAsOutParam(coll))", file: "VBoxManageInfo.cpp", line: 2022})
				return 1
			}
			s.human(&vm)
			continue
		}
		s.o.println("\"%s\" {%s}", name, vm.UUID)
	}
	return 0
}

// listedAsRunning is the set `list runningvms` shows: not starting,
// stopping, saving, restoring or guru meditation.
func listedAsRunning(state string) bool {
	switch state {
	case "running", "paused", "teleporting", "livesnapshotting", "teleportingpausedvm":
		return true
	}
	return false
}
