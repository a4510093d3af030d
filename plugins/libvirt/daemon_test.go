package libvirt_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// daemon is the tests' own libvirtd: started in mount and pid namespaces of
// its own, where its configuration, runtime, state, cache and log
// directories are the test's, so that it never touches a libvirt the
// machine may have, and its socket is in the test's directory. Its
// namespace's first process is a shell that reaps what libvirt leaves to
// it and starts libvirtd again when it exits, until told to stop; when it
// ends, the kernel kills every QEMU the daemon started. So does the death
// of the test process: unshare dies with it (Pdeathsig), and takes the
// namespace along.
type daemon struct {
	dir    string
	socket string
	cmd    *exec.Cmd
	exited chan struct{}
}

// The daemon's settings: no virtlogd (QEMU's output goes to files), no
// cgroups, no D-Bus, no polkit; QEMU runs as root and libvirt changes no
// file's owner or label.
const (
	libvirtdConf = `unix_sock_dir = "%[1]s/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:%[1]s/libvirtd.log"
`
	qemuConf = `stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
`
	// initScript is the namespace's first process.
	initScript = `set -e
D=$1
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/libvirt
mount --bind "$D/run" /run/libvirt
mount --bind "$D/etc" /etc/libvirt
mount --bind "$D/lib" /var/lib/libvirt
mount --bind "$D/cache" /var/cache/libvirt
mount --bind "$D/log" /var/log/libvirt
mount -t proc proc /proc
set +e
while [ ! -e "$D/stop" ]; do
	libvirtd -f /etc/libvirt/libvirtd.conf -p "$D/libvirtd.pid" >>"$D/libvirtd.out" 2>&1 &
	wait $!
	sleep 0.2
done
`
	// hookScript is libvirt's qemu hook: after a domain named in the file
	// hold stops, before libvirt says it is off, a qemu-io opens its disk
	// for the given milliseconds: another process's job on the disk of an
	// off domain, as a backup or a scan of it would be. The hook returns
	// once qemu-io holds the image's lock, which qemu-io tells by reading
	// the disk's first sector as soon as it has opened it (stdbuf: its line
	// comes out at once). The hook takes no lock to find out: a probe that
	// opens the image, as qemu-img info does, holds its locks while it
	// runs, and a qemu-io opening the disk meanwhile fails ("Failed to get
	// "write" lock") and holds nothing, which left the domain off and free
	// right after its stop. A qemu-io that fails to open the disk all the
	// same (another process had it for a moment) is started again.
	hookScript = `#!/bin/sh
[ "$2" = release ] || exit 0
[ -f "%[1]s/hold" ] || exit 0
while read -r dom disk ms; do
	[ "$dom" = "$1" ] || continue
	out="%[1]s/hold.$dom.out"
	tries=0
	while [ "$tries" -lt 50 ]; do
		tries=$((tries + 1))
		: >"$out"
		setsid -w sh -c 'stdbuf -oL qemu-io -f qcow2 -c "read 0 512" -c "sleep $1" "$2"; echo "exit $?"' - "$ms" "$disk" \
			</dev/null >>"$out" 2>&1 &
		n=0
		until grep -q -e '^read ' -e '^exit ' "$out" || [ "$n" -ge 3000 ]; do
			n=$((n + 1))
			sleep 0.01
		done
		if grep -q '^read ' "$out" || ! grep -q '^exit ' "$out"; then
			break # it holds the disk, or it is still opening it after 30 s
		fi
	done
done <"%[1]s/hold"
exit 0
`
)

// startDaemon starts a libvirtd and waits until it answers.
func startDaemon() (*daemon, error) {
	dir, err := os.MkdirTemp("", "slv")
	if err != nil {
		return nil, err
	}
	d := &daemon{dir: dir, socket: filepath.Join(dir, "sock", "libvirt-sock"), exited: make(chan struct{})}
	for _, sub := range []string{"etc/hooks", "run", "lib", "cache", "log", "sock"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	files := map[string]string{
		"etc/libvirtd.conf": fmt.Sprintf(libvirtdConf, dir),
		"etc/qemu.conf":     qemuConf,
		"etc/hooks/qemu":    fmt.Sprintf(hookScript, dir),
		"init.sh":           initScript,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o755); err != nil {
			return nil, err
		}
	}
	log, err := os.Create(filepath.Join(dir, "init.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	d.cmd = exec.Command("unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", filepath.Join(dir, "init.sh"), dir)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("unshare: %w", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	if err := d.waitReady(2 * time.Minute); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

// waitReady waits until libvirtd answers on its socket.
func (d *daemon) waitReady(bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		l, err := d.connect()
		if err == nil {
			_, err = l.ConnectGetLibVersion()
			_ = l.Disconnect()
			if err == nil {
				return nil
			}
		}
		select {
		case <-d.exited:
			out, _ := os.ReadFile(filepath.Join(d.dir, "init.log"))
			return fmt.Errorf("the libvirtd namespace ended: %s", out)
		default:
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(d.dir, "libvirtd.log"))
			return fmt.Errorf("libvirtd did not answer within %s: %v\n%s", bound, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// connect opens a connection of the test's own to the daemon.
func (d *daemon) connect() (*golibvirt.Libvirt, error) {
	l := golibvirt.NewWithDialer(dialFunc(func() (net.Conn, error) { return net.DialTimeout("unix", d.socket, 5*time.Second) }))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		return nil, err
	}
	return l, nil
}

type dialFunc func() (net.Conn, error)

func (f dialFunc) Dial() (net.Conn, error) { return f() }

// children lists the pids of pid's children.
func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		data, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// libvirtdPID is the daemon's libvirtd, as this process sees it; 0 while
// there is none.
func (d *daemon) libvirtdPID() int {
	for _, sh := range children(d.cmd.Process.Pid) {
		for _, c := range children(sh) {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); strings.TrimSpace(string(comm)) == "libvirtd" {
				return c
			}
		}
	}
	return 0
}

// restart kills libvirtd (SIGKILL: as a crash would) and waits until the
// next one answers; the domains' QEMU processes run on meanwhile.
func (d *daemon) restart(ctx context.Context) error {
	pid := d.libvirtdPID()
	if pid == 0 {
		return errors.New("no libvirtd to restart")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	for d.libvirtdPID() == pid {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return d.waitReady(time.Minute)
}

// qemuPID is the pid of the QEMU process running domain, as this process
// sees it; 0 when there is none.
func (d *daemon) qemuPID(domain string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		if !strings.HasPrefix(string(comm), "qemu-system") {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if strings.Contains(string(cmdline), "guest="+domain+",") {
			pid, _ := strconv.Atoi(filepath.Base(dir))
			return pid
		}
	}
	return 0
}

// stop ends the daemon and, with its namespace, every QEMU it started.
func (d *daemon) stop() {
	_ = os.WriteFile(filepath.Join(d.dir, "stop"), nil, 0o644)
	if pid := d.libvirtdPID(); pid != 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	_ = os.RemoveAll(d.dir)
}
