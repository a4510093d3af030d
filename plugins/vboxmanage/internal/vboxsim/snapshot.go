package vboxsim

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// snapshot: `snapshot <vm> list|take|restore|restorecurrent ...`. Every
// subcommand asks for a shared lock: exclusive on an unlocked machine,
// shared with a running VM process, refused while a session is going away.
func (s *sim) snapshot(args []string) int {
	if len(args) < 2 {
		return s.o.syntax("Not enough parameters")
	}
	ref, sub, rest := args[0], args[1], args[2:]
	var (
		target   string
		machine  bool
		descr    string
		takeName string
	)
	switch sub {
	case "list":
		for _, a := range rest {
			switch a {
			case "--machinereadable", "-machinereadable":
				machine = true
			case "--details", "-details":
			default:
				return s.o.syntax("Unknown option: %s", a)
			}
		}
	case "restore":
		if len(rest) != 1 {
			if len(rest) == 0 {
				return s.o.syntax("Expecting snapshot name only")
			}
			s.o.errorln("Too many arguments")
			return 1
		}
		target = rest[0]
	case "restorecurrent":
		if len(rest) != 0 {
			s.o.errorln("Too many arguments")
			return 1
		}
	case "take":
		if len(rest) == 0 {
			s.o.errorln("Missing snapshot name")
			return 1
		}
		takeName = rest[0]
		for i := 1; i < len(rest); i++ {
			switch rest[i] {
			case "--description", "-description", "-desc":
				if i+1 < len(rest) {
					i++
					descr = rest[i]
				}
			case "--live", "--pause":
			default:
				return s.o.syntax("Unknown option: %s", rest[i])
			}
		}
	default:
		return s.o.syntax("Invalid parameter '%s'", sub)
	}

	var took bool
	code := 0
	var vm VM
	var snap Snap
	err := s.update(func(w *World) error {
		v := w.Find(ref)
		if v == nil {
			code = s.o.notFound("snapshot", ref)
			return nil
		}
		took, _, code = s.lockShared("snapshot", v, false)
		if code != 0 {
			return nil
		}
		vm = *v
		switch sub {
		case "restore", "restorecurrent":
			if len(v.Snapshots) == 0 {
				s.o.println("This machine does not have any snapshots")
				code = 1
				return nil
			}
			if sub == "restorecurrent" {
				target = v.Current
			}
			i := findSnap(v, target)
			if i < 0 {
				msg := fmt.Sprintf("Could not find a snapshot named '%s'", target)
				if isUUIDRef(target) {
					msg = fmt.Sprintf("Could not find a snapshot with UUID {%s}", trimBraces(target))
				}
				s.o.api(apiError{msg: msg, hr: objectNotFound, component: "SessionMachine", iface: "IMachine",
					context: "FindSnapshot(Bstr(a->argv[2]).raw(), pSnapshot.asOutParam())", file: "VBoxManageSnapshot.cpp", line: 513})
				code = 1
				return nil
			}
			snap = v.Snapshots[i]
			if s.o.ver.atLeast(5, 1) {
				s.o.println("Restoring snapshot '%s' (%s)", snap.Name, snap.UUID)
			}
			if !isOff(v.State) {
				s.o.api(apiError{msg: fmt.Sprintf("Cannot delete the current state of the running machine (machine state: %s)", s.o.enumName(v.State)),
					hr: invalidVMState, component: "SessionMachine", iface: "IMachine",
					context: "RestoreSnapshot(pSnapshot, pProgress.asOutParam())", file: "VBoxManageSnapshot.cpp", line: 546})
				code = 1
				return nil
			}
			v.State, v.StateChanged = "restoringsnapshot", time.Now()
		case "take":
			snap = Snap{Name: takeName, UUID: newUUID(), Description: descr, Parent: v.Current, Online: hasProcess(v.State)}
		}
		return nil
	})
	if err != nil || code != 0 {
		if took {
			_ = s.release(ref)
		}
		return max(code, s.status(err))
	}
	defer func() {
		if took {
			_ = s.release(ref)
		}
	}()
	switch sub {
	case "list":
		s.sleep(s.cfg.Timing.ReadHold)
		if len(vm.Snapshots) == 0 {
			s.o.println("This machine does not have any snapshots")
			return 1
		}
		if machine {
			m := &mr{}
			s.snapshotLines(m, &vm)
			for _, l := range m.lines {
				s.o.println("%s", l)
			}
			return 0
		}
		s.humanSnapshots(&vm, "", 0)
		return 0
	case "restore", "restorecurrent":
		d := s.cfg.Timing.Restore
		if vm.Restore != nil {
			d = *vm.Restore
		}
		s.o.progress(d.D(), false)
		err := s.update(func(w *World) error {
			v := w.Find(ref)
			if v == nil {
				return nil
			}
			v.Current = snap.UUID
			v.State, v.StateChanged = "poweroff", time.Now()
			if snap.Online {
				v.State = "saved"
			}
			return nil
		})
		if err == nil {
			// The snapshot's disk holds none of the files the last run put
			// into the guest.
			err = os.RemoveAll(filepath.Join(s.env.Home, guestDir, vm.UUID))
		}
		return s.status(err)
	case "take":
		s.o.progress(s.cfg.Timing.Restore.D(), false)
		err := s.update(func(w *World) error {
			if v := w.Find(ref); v != nil {
				v.Snapshots = append(v.Snapshots, snap)
				v.Current = snap.UUID
			}
			return nil
		})
		if err != nil {
			return s.status(err)
		}
		if s.o.ver.atLeast(5, 1) {
			s.o.println("Snapshot taken. UUID: %s", snap.UUID)
		}
	}
	return 0
}

func (s *sim) humanSnapshots(vm *VM, parent string, depth int) {
	for _, sn := range vm.Snapshots {
		if sn.Parent != parent {
			continue
		}
		mark := ""
		if sn.UUID == vm.Current {
			mark = " *"
		}
		indent := strings.Repeat("   ", depth+1)
		s.o.println("%sName: %s (UUID: %s)%s", indent, sn.Name, sn.UUID, mark)
		if sn.Description != "" {
			s.o.println("%sDescription:", indent)
			s.o.println("%s%s", indent, sn.Description)
		}
		s.humanSnapshots(vm, sn.UUID, depth+1)
	}
}

// findSnap resolves a snapshot argument as FindSnapshot does: UUID first,
// then the first snapshot with that name.
func findSnap(vm *VM, ref string) int {
	id := trimBraces(ref)
	for i, sn := range vm.Snapshots {
		if sn.UUID == id {
			return i
		}
	}
	for i, sn := range vm.Snapshots {
		if sn.Name == ref {
			return i
		}
	}
	return -1
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
