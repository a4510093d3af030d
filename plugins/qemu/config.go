package qemu

import (
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/sdk"
)

// Config is the plugin's table in config.toml. Written out with the
// defaults of Defaults:
//
//	[plugins.qemu.config]
//	qemu = "qemu-system-x86_64"   # the emulator; a name is searched in PATH
//	qemu_img = "qemu-img"
//	state_dir = ""                # required: sockets, pid files, logs per VM
//	accel = "tcg"                 # "kvm" only where KVM really works
//
//	[plugins.qemu.config.timeouts]
//	start = "1m"                  # launch until QEMU answers on its monitor
//	monitor = "5s"                # wait for a monitor socket another client holds
//	stop = "10s"                  # quit until the QEMU process has exited
//	restore = "5m"                # qemu-img snapshot -a
//
//	[plugins.qemu.config.guest]
//	ready_wait = "30s"            # wait for the guest agent to answer
//	chunk_size = 1048576          # bytes per guest-file-read/-write, at most 4 MiB
//	max_output = 1048576          # bytes of a guest command's stdout, and of its stderr, exec keeps
//	max_copy_out = 1073741824     # bytes of a guest file copy_out takes; a larger one fails
//	kill = ["kill", "-KILL"]      # guest command that kills a timed-out command's pid
//
//	[plugins.qemu.config.vms.NAME]
//	disk = "..."                  # required: the qcow2 image holding the snapshots
//	snapshot = "ready"            # the snapshot it is at until restored to another
//	kernel = ""                   # boot this kernel (with initrd and append); empty: the disk's bootloader
//	initrd = ""
//	append = ""
//	memory = 256                  # MiB
//	cpus = 1
//	guest_agent = true            # a virtio-serial channel for qemu-ga
//	on_poweroff = "exit"          # or "preserve": keep the QEMU process after the guest is off
//	args = []                     # more arguments for QEMU
type Config struct {
	// QEMU is the system emulator; a bare name is looked up in PATH.
	QEMU string `toml:"qemu"`
	// QEMUImg is qemu-img, for snapshot restores.
	QEMUImg string `toml:"qemu_img"`
	// StateDir holds a directory per VM: its monitor and agent sockets,
	// pid file, console and QEMU logs, and which snapshot it is at.
	// Unix socket paths must stay under 108 bytes, so keep it short.
	StateDir string `toml:"state_dir"`
	// Accel is QEMU's accelerator. "tcg" (software emulation) works
	// everywhere; "kvm" is much faster where /dev/kvm really works.
	Accel string `toml:"accel"`
	// Timeouts is the [timeouts] table.
	Timeouts Timeouts `toml:"timeouts"`
	// Guest is the [guest] table: how guest operations use the agent.
	Guest Guest `toml:"guest"`
	// VMs are the VMs the driver operates, by name.
	VMs map[string]VMConfig `toml:"vms"`
}

// Timeouts bound the waits of single operations; each also ends with the
// caller's deadline.
type Timeouts struct {
	// Start bounds a launch: until QEMU answers on its monitor, which,
	// when it resumes a snapshot, is after the snapshot is loaded.
	Start time.Duration `toml:"start"`
	// Monitor is how long an operation waits for a monitor socket that
	// another client holds (QEMU serves one at a time) before it answers
	// locked.
	Monitor time.Duration `toml:"monitor"`
	// Stop is how long a power-off waits for the QEMU process to exit
	// after quit, before it kills it.
	Stop time.Duration `toml:"stop"`
	// Restore bounds qemu-img snapshot -a.
	Restore time.Duration `toml:"restore"`
}

// Guest configures guest operations through the QEMU guest agent.
type Guest struct {
	// ReadyWait is how long a guest operation waits for the agent to
	// answer, as it does not while the guest boots, before it answers
	// invalid state.
	ReadyWait time.Duration `toml:"ready_wait"`
	// ChunkSize is the number of bytes moved per guest-file-read or
	// guest-file-write. The agent holds a chunk in memory several times
	// over; a large write can get it killed in a small guest.
	ChunkSize int `toml:"chunk_size"`
	// MaxOutput bounds, in bytes, what exec keeps of each of a guest
	// command's stdout and stderr (contract §9.5); the result says when
	// it dropped the rest. The agent itself keeps at most 16 MiB.
	MaxOutput int `toml:"max_output"`
	// MaxCopyOut bounds, in bytes, a guest file copy_out takes; a larger
	// one fails the copy and leaves no host file (§9.5).
	MaxCopyOut int64 `toml:"max_copy_out"`
	// Kill is the guest command, given the guest pid as its last
	// argument, that kills a command that outlived its timeout. For a
	// Windows guest: ["taskkill", "/F", "/PID"].
	Kill []string `toml:"kill"`
}

// VMConfig is one VM.
type VMConfig struct {
	// Disk is the VM's qcow2 image. Its internal snapshots are the VM's
	// snapshots; the driver reverts it with qemu-img and resumes it with
	// -loadvm. The VM owns it: two VMs cannot share one image.
	Disk string `toml:"disk"`
	// Snapshot is the snapshot the VM is at until the driver restores
	// another one.
	Snapshot string `toml:"snapshot"`
	// Kernel, Initrd and Append boot a Linux kernel directly; without a
	// kernel the firmware boots the disk.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	Append string `toml:"append"`
	// Memory is the guest's RAM in MiB.
	Memory int `toml:"memory"`
	// CPUs is the number of virtual CPUs.
	CPUs int `toml:"cpus"`
	// GuestAgent gives the guest a virtio-serial channel for qemu-ga;
	// guest operations need it. Default true.
	GuestAgent *bool `toml:"guest_agent"`
	// OnPoweroff is what happens to the QEMU process once the guest is
	// off: "exit" (the default), or "preserve", which keeps the process
	// (its memory, for a dump) and with it the VM locked until Unlock,
	// Cleanup or an emergency stop ends it.
	OnPoweroff string `toml:"on_poweroff"`
	// Args are more QEMU arguments, appended as they are.
	Args []string `toml:"args"`
}

// Defaults returns the configuration used for every key left unset.
func Defaults() Config {
	return Config{
		QEMU:    "qemu-system-x86_64",
		QEMUImg: "qemu-img",
		Accel:   "tcg",
		Timeouts: Timeouts{
			Start:   time.Minute,
			Monitor: 5 * time.Second,
			Stop:    10 * time.Second,
			Restore: 5 * time.Minute,
		},
		Guest: Guest{ReadyWait: 30 * time.Second, ChunkSize: 1 << 20, MaxOutput: 1 << 20, MaxCopyOut: 1 << 30,
			Kill: []string{"kill", "-KILL"}},
	}
}

// vmDefaults fills in a VM's unset keys.
func vmDefaults(vm VMConfig) VMConfig {
	if vm.Memory == 0 {
		vm.Memory = 256
	}
	if vm.CPUs == 0 {
		vm.CPUs = 1
	}
	if vm.GuestAgent == nil {
		yes := true
		vm.GuestAgent = &yes
	}
	if vm.OnPoweroff == "" {
		vm.OnPoweroff = onPoweroffExit
	}
	return vm
}

// The values of on_poweroff.
const (
	onPoweroffExit     = "exit"
	onPoweroffPreserve = "preserve"
)

// maxChunk is the largest chunk guest file transfers use: the agent of a
// small guest has been seen killed for memory by a 40 MB write.
const maxChunk = 4 << 20

// maxOutput is the largest guest.max_output: qemu-ga keeps no more of a
// command's stream.
const maxOutput = 16 << 20

// maxSocketPath is the longest unix socket path the kernel takes, less
// its terminating zero.
const maxSocketPath = 107

// vm is a configured VM with its paths resolved.
type vm struct {
	name string
	VMConfig
	dir string // its directory in the state directory
}

func (v *vm) path(file string) string { return filepath.Join(v.dir, file) }

// Files of a VM's directory.
const (
	fileQMP     = "qmp.sock"
	fileAgent   = "qga.sock"
	filePID     = "qemu.pid"
	fileConsole = "console.log"
	fileLog     = "qemu.log"
	fileRecord  = "state.json"
)

// settings is a validated configuration.
type settings struct {
	Config
	vms map[string]*vm
}

// load decodes and validates the plugin's table; every mistake names its
// key and line.
func load(cfg sdk.Config) (*settings, error) {
	c := Defaults()
	if err := cfg.Decode(&c); err != nil {
		return nil, err
	}
	if c.StateDir == "" {
		return nil, cfg.Errorf([]string{"state_dir"}, "missing: set a directory for the VMs' sockets, pid files and logs, e.g. \"bin/qemu-vms\"")
	}
	dir, err := filepath.Abs(cfg.Path(c.StateDir))
	if err != nil {
		return nil, cfg.Errorf([]string{"state_dir"}, "%v", err)
	}
	c.StateDir = dir
	if strings.ContainsRune(c.QEMU, filepath.Separator) {
		c.QEMU = cfg.Path(c.QEMU)
	}
	if strings.ContainsRune(c.QEMUImg, filepath.Separator) {
		c.QEMUImg = cfg.Path(c.QEMUImg)
	}
	for key, d := range map[string]time.Duration{
		"timeouts.start": c.Timeouts.Start, "timeouts.monitor": c.Timeouts.Monitor,
		"timeouts.stop": c.Timeouts.Stop, "timeouts.restore": c.Timeouts.Restore,
		"guest.ready_wait": c.Guest.ReadyWait,
	} {
		if d <= 0 {
			return nil, cfg.Errorf(strings.Split(key, "."), "must be a positive duration such as \"10s\"")
		}
	}
	if c.Guest.ChunkSize <= 0 || c.Guest.ChunkSize > maxChunk {
		return nil, cfg.Errorf([]string{"guest", "chunk_size"}, "must be between 1 and %d bytes (4 MiB)", maxChunk)
	}
	if c.Guest.MaxOutput <= 0 || c.Guest.MaxOutput > maxOutput {
		return nil, cfg.Errorf([]string{"guest", "max_output"}, "must be between 1 and %d bytes (16 MiB, what the guest agent keeps)", maxOutput)
	}
	if c.Guest.MaxCopyOut <= 0 {
		return nil, cfg.Errorf([]string{"guest", "max_copy_out"}, "must be a positive number of bytes, e.g. 1073741824")
	}
	if len(c.Guest.Kill) == 0 {
		return nil, cfg.Errorf([]string{"guest", "kill"}, "must name a guest command, e.g. [\"kill\", \"-KILL\"]")
	}
	s := &settings{Config: c, vms: map[string]*vm{}}
	for _, name := range slices.Sorted(maps.Keys(c.VMs)) {
		v, err := checkVM(cfg, c, name, c.VMs[name])
		if err != nil {
			return nil, err
		}
		s.vms[name] = v
	}
	return s, nil
}

func checkVM(cfg sdk.Config, c Config, name string, vc VMConfig) (*vm, error) {
	key := func(k ...string) []string { return append([]string{"vms", name}, k...) }
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\,= `) {
		return nil, cfg.Errorf(key(), "a VM name must be a plain file name without spaces, commas or '='")
	}
	vc = vmDefaults(vc)
	if vc.Disk == "" {
		return nil, cfg.Errorf(key("disk"), "missing: the VM's qcow2 image, which holds its snapshots")
	}
	vc.Disk = cfg.Path(vc.Disk)
	if abs, err := filepath.Abs(vc.Disk); err == nil {
		vc.Disk = abs
	}
	for _, p := range []*string{&vc.Kernel, &vc.Initrd} {
		if *p != "" {
			*p, _ = filepath.Abs(cfg.Path(*p))
		}
	}
	if vc.Kernel == "" && (vc.Initrd != "" || vc.Append != "") {
		return nil, cfg.Errorf(key("kernel"), "missing: initrd and append need a kernel to boot")
	}
	if vc.Memory < 16 {
		return nil, cfg.Errorf(key("memory"), "%d MiB is too little for any guest; give MiB, e.g. 256", vc.Memory)
	}
	if vc.CPUs < 1 {
		return nil, cfg.Errorf(key("cpus"), "must be at least 1")
	}
	if vc.OnPoweroff != onPoweroffExit && vc.OnPoweroff != onPoweroffPreserve {
		return nil, cfg.Errorf(key("on_poweroff"), "%q: use \"exit\" or \"preserve\"", vc.OnPoweroff)
	}
	v := &vm{name: name, VMConfig: vc, dir: filepath.Join(c.StateDir, name)}
	for _, f := range []string{fileQMP, fileAgent} {
		if p := v.path(f); len(p) > maxSocketPath {
			return nil, cfg.Errorf([]string{"state_dir"}, "VM %s's socket %s is %d bytes long; unix sockets take at most %d: choose a shorter state_dir",
				name, p, len(p), maxSocketPath)
		}
	}
	return v, nil
}
