package vboxsim

import (
	"fmt"
	"strings"
	"time"
)

// showvminfo: `showvminfo <vm> [--machinereadable|-machinereadable|--details]`.
// It asks for a shared lock, which on an unlocked machine is an exclusive
// one held while the command runs; failure to lock is ignored.
func (s *sim) showvminfo(args []string) int {
	var ref string
	machine := false
	for _, a := range args {
		switch a {
		case "--machinereadable", "-machinereadable":
			machine = true
		case "--details", "-details":
		default:
			if strings.HasPrefix(a, "-") {
				return s.o.syntax("Unknown option: %s", a)
			}
			if ref != "" {
				return s.o.syntax("Too many parameters")
			}
			ref = a
		}
	}
	if ref == "" {
		return s.o.syntax("VM name or UUID required")
	}
	var vm VM
	var took, console bool
	code := 0
	err := s.update(func(w *World) error {
		v := w.Find(ref)
		if v == nil {
			code = s.o.notFound("showvminfo", ref)
			return nil
		}
		took, console, _ = s.lockShared("showvminfo", v, true)
		vm = *v
		if !w.Config.Faults.HideSessionName {
			v.shown()
		}
		return nil
	})
	if err != nil || code != 0 {
		return max(code, s.status(err))
	}
	if took {
		s.sleep(s.cfg.Timing.ReadHold)
		defer func() { _ = s.release(ref) }()
	}
	if !machine {
		s.human(&vm)
		return 0
	}
	lines := s.machineReadable(&vm, console)
	if s.accessDenied {
		// The error strikes while reading running-only data, after most
		// of the dump has been printed.
		for _, l := range lines {
			if strings.HasPrefix(l, "vrde=") {
				break
			}
			s.o.println("%s", l)
		}
		s.o.api(apiError{msg: "The object is not ready", hr: accessDenied,
			context: "COMGETTER(RemoteUSBDevices)(ComSafeArrayAsOutParam(coll))", file: "VBoxManageInfo.cpp", line: 2022})
		return 1
	}
	for _, l := range lines {
		s.o.println("%s", l)
	}
	return 0
}

// mr builds machine-readable lines.
type mr struct {
	lines []string
}

// str prints a value through the escaping helper: `\` and `"` escaped.
func (m *mr) str(k, v string) { m.lines = append(m.lines, fmt.Sprintf(`%s="%s"`, k, escape(v))) }

// raw prints a quoted value without escaping, as VBoxManage does for
// snapshot names, NIC strings and (before 7.0) storage paths.
func (m *mr) raw(k, v string) { m.lines = append(m.lines, fmt.Sprintf(`%s="%s"`, k, v)) }

func (m *mr) num(k string, n int) { m.lines = append(m.lines, fmt.Sprintf("%s=%d", k, n)) }

func (m *mr) line(l string) { m.lines = append(m.lines, l) }

func escape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
}

// paths returns the VM's folder and a path joiner in the host's style.
func (s *sim) paths(vm *VM) (string, func(...string) string) {
	switch s.cfg.Host {
	case "windows":
		return `C:\Users\ci\VirtualBox VMs\` + vm.Name, func(p ...string) string { return strings.Join(p, `\`) }
	case "darwin":
		return "/Users/ci/VirtualBox VMs/" + vm.Name, func(p ...string) string { return strings.Join(p, "/") }
	}
	return "/home/ci/VirtualBox VMs/" + vm.Name, func(p ...string) string { return strings.Join(p, "/") }
}

// machineReadable renders `showvminfo --machinereadable` in the
// configured version's key order and irregularities (FACTS §1.1-1.6).
func (s *sim) machineReadable(vm *VM, console bool) []string {
	m := &mr{}
	v := s.o.ver
	if vm.Inaccessible {
		m.str("name", "<inaccessible>")
		m.str("UUID", vm.UUID)
		return m.lines
	}
	dir, join := s.paths(vm)
	m.str("name", vm.Name)
	switch {
	case v.major == 7 && v.minor == 0:
		m.line("Encryption:     disabled")
	case v.atLeast(7, 1):
		m.str("encryption", "disabled")
	}
	m.str("groups", "/")
	if v.atLeast(7, 1) {
		m.str("platformArchitecture", "x86")
	}
	m.str("ostype", osTypeDescription(vm.OSType))
	m.str("UUID", vm.UUID)
	m.str("CfgFile", join(dir, vm.Name+".vbox"))
	m.str("SnapFldr", join(dir, "Snapshots"))
	m.str("LogFldr", join(dir, "Logs"))
	m.str("hardwareuuid", vm.UUID)
	m.num("memory", 4096)
	m.str("pagefusion", "off")
	m.num("vram", 16)
	m.num("cpuexecutioncap", 100)
	if !v.atLeast(7, 1) {
		m.str("hpet", "off")
	}
	m.str("cpu-profile", "host")
	m.str("chipset", "piix3")
	m.str("firmware", "BIOS")
	m.num("cpus", 2)
	if v.atLeast(7, 1) {
		m.str("hpet", "off")
	}
	m.str("pae", "on")
	m.str("longmode", "on")
	m.str("triplefaultreset", "off")
	m.str("apic", "on")
	m.str("x2apic", "on")
	if v.major >= 6 {
		m.str("nested-hw-virt", "off")
	}
	m.num("cpuid-portability-level", 0)
	m.str("bootmenu", "messageandmenu")
	for i, b := range []string{"floppy", "dvd", "disk", "none"} {
		m.str(fmt.Sprintf("boot%d", i+1), b)
	}
	m.str("acpi", "on")
	m.str("ioapic", "on")
	if v.atLeast(5, 1) {
		m.str("biosapic", "apic")
	}
	m.num("biossystemtimeoffset", 0)
	switch {
	case v.atLeast(7, 1):
		m.str("NvramFile", join(dir, vm.Name+".nvram"))
	case v.atLeast(6, 1):
		m.str("BIOS NVRAM File", join(dir, vm.Name+".nvram"))
	}
	m.str("rtcuseutc", "on")
	for _, k := range []string{"hwvirtex", "nestedpaging", "vtxvpid", "vtxux"} {
		m.str(k, "on")
	}
	if v.major >= 7 {
		m.str("virtvmsavevmload", "on")
		m.str("iommu", "none")
	}
	m.str("paravirtprovider", "default")
	m.str("effparavirtprovider", "kvm")
	m.str("VMState", vm.State)
	m.str("VMStateChangeTime", vm.StateChanged.UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000000000"))
	if vm.State == "saved" || vm.State == "aborted-saved" {
		m.raw("VMStateFile", join(dir, "Snapshots", "2024-03-05T10-00-00-000000000Z.sav"))
	}
	if v.major >= 6 {
		m.str("graphicscontroller", "vmsvga")
	}
	m.num("monitorcount", 1)
	m.str("accelerate3d", "off")
	m.str("accelerate2dvideo", "off")
	m.str("teleporterenabled", "off")
	m.num("teleporterport", 0)
	m.num("autostart-delay", 0)
	m.str("defaultfrontend", "")
	if v.atLeast(6, 1) {
		m.str("vmprocpriority", "default")
	}
	m.str("storagecontrollername0", "SATA Controller")
	m.str("storagecontrollertype0", "IntelAhci")
	m.str("storagecontrollerinstance0", "0")
	m.str("storagecontrollermaxportcount0", "30")
	m.str("storagecontrollerportcount0", "2")
	m.str("storagecontrollerbootable0", "on")
	disk := join(dir, vm.Name+".vdi")
	if v.major >= 7 {
		m.str(`"SATA Controller-0-0"`, disk)
	} else {
		m.raw(`"SATA Controller-0-0"`, disk)
	}
	m.str(`"SATA Controller-ImageUUID-0-0"`, deriveUUID(vm.UUID, 0xd15c))
	m.str(`"SATA Controller-1-0"`, "emptydrive")
	if v.major >= 7 {
		m.str(`"SATA Controller-IsEjected-1-0"`, "off")
		m.str(`"SATA Controller-nonrotational-0-0"`, "off")
	} else {
		m.str(`"SATA Controller-IsEjected"`, "off")
		m.str(`"SATA Controller-tempeject"`, "off")
	}
	m.raw("natnet1", "nat")
	m.str("macaddress1", "080027A1B2C3")
	m.str("cableconnected1", "on")
	m.str("nic1", "nat")
	m.str("nictype1", "82540EM")
	m.str("nicspeed1", "0")
	m.str("mtu", "0")
	m.raw("Forwarding(0)", "rdp,tcp,127.0.0.1,3390,,3389")
	for i := 2; i <= 8; i++ {
		m.str(fmt.Sprintf("nic%d", i), "none")
	}
	m.str("hidpointing", "usbtablet")
	m.str("hidkeyboard", "ps2kbd")
	m.str("uart1", "off")
	m.str("audio", "none")
	if v.major >= 6 {
		m.str("audio_out", "off")
		m.str("audio_in", "off")
	}
	m.str("clipboard", "disabled")
	m.str("draganddrop", "disabled")
	if vm.Session.State != Unlocked && vm.Session.Name != "" {
		m.str("SessionName", vm.Session.Name)
	}
	if console {
		m.line(`VideoMode="1024,768,32"@0,0 1`)
	}
	m.str("vrde", "on")
	m.num("vrdeport", -1)
	m.raw("vrdeports", "3389")
	m.raw("vrdeproperty[TCP/Ports]", "3389")
	m.line("vrdeproperty[VideoChannel/Quality]=<not set>")
	m.str("usb", "off")
	m.str("ehci", "off")
	m.str("xhci", "off")
	if console {
		m.str("VRDEActiveConnection", "off")
		if v.major >= 6 {
			m.line("VRDEClients==0")
		} else {
			m.line("VRDEClients=0")
		}
	}
	if v.major >= 7 {
		m.str("recording_enabled", "off")
		m.num("recording_screens", 1)
		m.line(" rec_screen0")
		m.str("rec_screen_enabled", "off")
	} else {
		m.str("vcpenabled", "off")
		m.num("vcpscreens", 0)
	}
	s.snapshotLines(m, vm)
	m.num("GuestMemoryBalloon", 0)
	if console && vm.State == "running" {
		level := 2
		if !s.guestReady(vm) {
			level = 1
		}
		m.str("GuestOSType", vm.OSType)
		m.num("GuestAdditionsRunLevel", level)
		m.str("GuestAdditionsVersion", strings.Replace(s.cfg.Version, "r", " r", 1))
		m.line(fmt.Sprintf("GuestAdditionsFacility_VirtualBox Base Driver=50,%d", vm.StartedAt.UnixMilli()))
		m.line(fmt.Sprintf("GuestAdditionsFacility_VirtualBox System Service=%d,%d", map[bool]int{true: 50, false: 30}[level >= 2], vm.StartedAt.UnixMilli()))
	}
	return m.lines
}

// snapshotLines prints the tree depth-first, each level's children
// numbered from 1, with the Current* keys right after the current node.
// Names and descriptions are not escaped.
func (s *sim) snapshotLines(m *mr, vm *VM) {
	var walk func(parent, suffix string)
	walk = func(parent, suffix string) {
		i := 0
		for _, sn := range vm.Snapshots {
			if sn.Parent != parent {
				continue
			}
			i++
			suf := suffix
			if parent != "" {
				suf = fmt.Sprintf("%s-%d", suffix, i)
			}
			m.raw("SnapshotName"+suf, sn.Name)
			m.raw("SnapshotUUID"+suf, sn.UUID)
			if sn.Description != "" {
				m.raw("SnapshotDescription"+suf, sn.Description)
			}
			if sn.UUID == vm.Current {
				m.raw("CurrentSnapshotName", sn.Name)
				m.raw("CurrentSnapshotUUID", sn.UUID)
				m.raw("CurrentSnapshotNode", "SnapshotName"+suf)
			}
			walk(sn.UUID, suf)
		}
	}
	walk("", "")
}

// human prints the human format (showvminfo without --machinereadable,
// and each block of list --long vms). The lines a driver reads are
// VirtualBox's: State and the snapshot tree (FACTS §1.3, §4.3), and
// "Session name:", which VBoxManageInfo.cpp prints under the same
// condition as SessionName (session not Unlocked, name not empty). The
// rest reproduces the format's shape: labels padded to a column that
// differs by version, a column-0 "Name:" line for shared folders after the
// VM's own.
func (s *sim) human(vm *VM) {
	width := 17
	if s.o.ver.major >= 7 {
		width = 29
	}
	p := func(label, format string, args ...any) {
		s.o.println("%-*s%s", width, label+":", fmt.Sprintf(format, args...))
	}
	dir, join := s.paths(vm)
	if vm.Inaccessible {
		p("Name", "<inaccessible!>")
		p("UUID", "%s", vm.UUID)
		p("Config file", "%s", join(dir, vm.Name+".vbox"))
		s.o.println("Access error details:")
		s.o.println("ErrorInfo:")
		return
	}
	p("Name", "%s", vm.Name)
	if s.o.ver.major >= 7 {
		p("Encryption", "disabled")
	}
	p("Groups", "/")
	p("Guest OS", "%s", osTypeDescription(vm.OSType))
	p("UUID", "%s", vm.UUID)
	p("Config file", "%s", join(dir, vm.Name+".vbox"))
	p("Snapshot folder", "%s", join(dir, "Snapshots"))
	p("Log folder", "%s", join(dir, "Logs"))
	p("Hardware UUID", "%s", vm.UUID)
	p("Memory size", "4096MB")
	p("Number of CPUs", "2")
	p("State", "%s (since %s)", longName(vm.State), vm.StateChanged.UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000000000"))
	p("Monitor count", "1")
	p("Storage Controller Name (0)", "SATA Controller")
	s.o.println("SATA Controller (0, 0): %s (UUID: %s)", join(dir, vm.Name+".vdi"), deriveUUID(vm.UUID, 0xd15c))
	p("NIC 1", "MAC: 080027A1B2C3, Attachment: NAT, Cable connected: on")
	p("Clipboard Mode", "disabled")
	if vm.Session.State != Unlocked && vm.Session.Name != "" && !s.cfg.Faults.HideSessionName {
		p("Session name", "%s", vm.Session.Name)
	}
	p("VRDE", "disabled")
	p("USB", "disabled")
	s.o.println("")
	s.o.println("Shared folders:")
	s.o.println("")
	s.o.println("Name: 'share', Host path: '%s' (machine mapping), writable", join(dir, "share"))
	s.o.println("")
	if len(vm.Snapshots) == 0 {
		s.o.println("Snapshots: None")
		s.o.println("")
		return
	}
	s.o.println("Snapshots:")
	s.o.println("")
	s.humanSnapshots(vm, "", 0)
	s.o.println("")
}

func osTypeDescription(id string) string {
	switch id {
	case "Windows10_64":
		return "Windows 10 (64-bit)"
	case "Ubuntu_64":
		return "Ubuntu (64-bit)"
	case "":
		return "Other/Unknown"
	}
	return id
}
