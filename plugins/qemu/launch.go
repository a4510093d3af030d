package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/plugins/qemu/internal/qmp"
	"github.com/sandboxhq/sandbox/sdk/wait"
)

// commandLine is QEMU's command line for v, resuming snapshot resume if
// not empty. The devices and their order are part of every snapshot: a
// snapshot resumes only on the machine it was taken on, so
// plugins/qemu/guest/build.sh, which takes the test guest's, builds the
// same one.
func (d *Driver) commandLine(v *vm, resume string) []string {
	args := []string{
		"-name", "guest=" + v.name,
		"-machine", "pc,accel=" + d.cfg.Accel,
		"-m", strconv.Itoa(v.Memory), "-smp", strconv.Itoa(v.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none",
		// A reboot is the guest's end: sandboxes do not want a second boot.
		"-no-reboot",
	}
	if v.Kernel != "" {
		args = append(args, "-kernel", v.Kernel)
		if v.Initrd != "" {
			args = append(args, "-initrd", v.Initrd)
		}
		if v.Append != "" {
			args = append(args, "-append", v.Append)
		}
	}
	args = append(args,
		"-blockdev", "driver=file,filename="+escape(v.Disk)+",node-name=disk0-file",
		"-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
		"-device", "virtio-blk-pci,drive=disk0,id=disk0",
	)
	if *v.GuestAgent {
		args = append(args,
			"-device", "virtio-serial-pci,id=virtio-serial0",
			"-chardev", "socket,id=qga0,path="+escape(v.path(fileAgent))+",server=on,wait=off",
			"-device", "virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0,id=qga0",
		)
	}
	args = append(args,
		"-serial", "file:"+v.path(fileConsole),
		"-qmp", "unix:"+escape(v.path(fileQMP))+",server=on,wait=off",
		"-pidfile", v.path(filePID),
	)
	if v.OnPoweroff == onPoweroffPreserve {
		args = append(args, "-action", "shutdown=pause")
	}
	if resume != "" {
		args = append(args, "-loadvm", resume)
	}
	return append(args, v.Args...)
}

// escape doubles the commas of a path inside a QEMU option list.
func escape(p string) string { return strings.ReplaceAll(p, ",", ",,") }

// Start launches the VM's QEMU (§4): resuming its current snapshot with
// -loadvm when the VM is clean and the snapshot holds a running guest,
// else booting it. It returns once QEMU answers on its monitor, which it
// does only after the snapshot is loaded: the VM is then running.
func (d *Driver) Start(ctx context.Context, name string) error {
	v, release, err := d.begin(ctx, hypervisor.OpStart, name)
	if err != nil {
		return err
	}
	defer release()
	st, p := d.observe(ctx, v)
	switch {
	case p.pid != 0 && (st.Power == hypervisor.PowerRunning || st.Power == hypervisor.PowerStarting):
		return nil // §4.2
	case p.pid != 0 && st.Power.IsOff():
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name,
			"the guest is off but its QEMU process %d still holds the VM (on_poweroff = \"preserve\"): unlock the VM first", p.pid)
	case p.pid != 0 && st.Power == hypervisor.PowerStopping:
		// Transient: the old process is on its way out (§11.1).
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name, "QEMU process %d is still exiting", p.pid)
	case p.pid != 0 && st.Power == hypervisor.PowerUnknown && errors.Is(p.monitor, qmp.ErrBusy):
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name,
			"QEMU process %d runs the VM and another client holds its QMP socket", p.pid)
	case p.pid != 0:
		return hypervisor.NewError(hypervisor.CodeInvalidState, hypervisor.OpStart, name,
			"QEMU process %d has the VM %s", p.pid, st.Raw)
	case st.Lock == hypervisor.LockLocked:
		return hypervisor.NewError(hypervisor.CodeLocked, hypervisor.OpStart, name,
			"the disk %s is held by %s", v.Disk, describeHolders(v))
	}
	rec := loadRecord(v)
	resume := resumable(v, rec)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeouts.Start)
	defer cancel()
	begun := time.Now()
	pid, err := d.launch(ctx, v, resume)
	if err != nil {
		return err
	}
	rec.Clean, rec.PID = false, pid
	if err := saveRecord(v, rec); err != nil {
		d.log.Warn("cannot record that the VM ran", "vm", name, "error", err)
	}
	d.log.Info("VM started", "vm", name, "resumed", resume, "took", time.Since(begun))
	return nil
}

// launch runs QEMU for v and waits until it answers on its monitor; it
// returns the process id. A QEMU that exits first fails the start with its
// own words; one still setting up when ctx ends is killed.
func (d *Driver) launch(ctx context.Context, v *vm, resume string) (int, error) {
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return 0, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, v.name, "%v", err)
	}
	removeStale(v)
	logf, err := os.Create(v.path(fileLog))
	if err != nil {
		return 0, hypervisor.NewError(hypervisor.CodeFailed, hypervisor.OpStart, v.name, "%v", err)
	}
	cmd := exec.Command(d.cfg.QEMU, d.commandLine(v, resume)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = v.dir
	cmd.SysProcAttr = detached()
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return 0, hypervisor.NewError(hypervisor.CodeUnavailable, hypervisor.OpStart, v.name, "cannot run %s: %v", d.cfg.QEMU, err)
	}
	d.log.Debug("QEMU launched", "vm", v.name, "pid", cmd.Process.Pid, "args", cmd.Args)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// The socket appears some milliseconds after exec.
	var failed error
	err = wait.Until(ctx, launchPolicy, func(ctx context.Context) (bool, error) {
		m, err := qmp.DialMonitor(ctx, v.path(fileQMP))
		if err == nil {
			_, err = m.QueryStatus(ctx)
			m.Close()
			if err == nil {
				return true, nil
			}
		}
		select {
		case werr := <-exited:
			failed = d.launchFailed(v, werr)
			return false, failed
		default:
		}
		if !errors.Is(err, qmp.ErrNoSocket) && ctx.Err() == nil {
			d.log.Debug("monitor not ready", "vm", v.name, "error", err)
		}
		return false, nil
	})
	switch {
	case err == nil:
		return cmd.Process.Pid, nil
	case failed != nil:
		return 0, failed
	}
	_ = kill(cmd.Process.Pid)
	<-exited
	d.log.Debug("QEMU killed: the start was cut short", "vm", v.name, "pid", cmd.Process.Pid, "error", err)
	return 0, &hypervisor.Error{Code: hypervisor.CodeTimeout, Op: hypervisor.OpStart, VM: v.name,
		Message: "QEMU did not answer on its monitor in time; killed it", Err: ctx.Err()}
}

// launchPolicy paces the looks for a starting QEMU's monitor.
var launchPolicy = wait.Policy{Initial: 2 * time.Millisecond, Max: 4 * time.Millisecond, Factor: 2}

// launchFailed is the error for a QEMU that exited while starting, with
// its last words: "Failed to get "write" lock" (another process has the
// disk) and "Cannot lock pid file" (another QEMU runs the VM) make it
// locked.
func (d *Driver) launchFailed(v *vm, werr error) error {
	out, _ := os.ReadFile(v.path(fileLog))
	msg := lastLines(out, 3)
	if msg == "" {
		msg = fmt.Sprint(werr)
	}
	code := hypervisor.CodeFailed
	if strings.Contains(msg, `Failed to get "write" lock`) || strings.Contains(msg, "Cannot lock pid file") {
		code = hypervisor.CodeLocked
	}
	removeStale(v)
	return &hypervisor.Error{Code: code, Op: hypervisor.OpStart, VM: v.name, Message: "QEMU exited while starting: " + msg, Err: werr}
}

// lastLines returns the last n non-empty lines of out, joined by " / ".
func lastLines(out []byte, n int) string {
	var lines []string
	for _, l := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
		if l := strings.TrimSpace(string(l)); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
