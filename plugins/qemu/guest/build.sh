#!/usr/bin/env bash
# Builds the QEMU test guest from Debian's packages into OUT (default: the
# git-ignored plugins/qemu/guest/cache), reusing what an earlier run built
# for the same inputs:
#
#   vmlinuz                 the kernel of the package linux-image-amd64 depends on
#   initramfs.cpio.gz       busybox, qemu-ga with its libraries, the virtio,
#                           evdev and button modules, the init and the scanner
#   disk.qcow2              a 64 MiB disk holding two snapshots taken with the
#                           guest running and its agent answering:
#                             ready              the guest honours the power button
#                             ready-ignore-acpi  the guest ignores it
#   slow.qcow2              the conformance suite's slow-restore disk: 384 MiB
#                           written in 512-byte clusters before its disk-only
#                           snapshot "data", so that reverting it walks
#                           786432 clusters (two seconds or more, well over
#                           the suite's one-second margin)
#   manifest                what it was built from
#
# Needs, from Debian: qemu-system-x86 qemu-utils qemu-guest-agent
# busybox-static cpio, and apt-get's package lists (apt-get update). The
# kernel package is downloaded, never installed.
#
# The guest's QEMU command line below must match the one the driver builds
# (plugins/qemu/launch.go): a snapshot resumes only on the machine it was
# taken on. The driver's tests resume these snapshots, so a mismatch fails
# them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/cache}
qemu=${QEMU:-qemu-system-x86_64}

die() { echo "build.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing: $2"; }
need "$qemu" "apt-get install --no-install-recommends qemu-system-x86"
need qemu-img "apt-get install --no-install-recommends qemu-utils"
need cpio "apt-get install --no-install-recommends cpio"
need dpkg-deb "this script needs a Debian system"
[ -x /usr/sbin/qemu-ga ] || die "/usr/sbin/qemu-ga is missing: apt-get install --no-install-recommends qemu-guest-agent"
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install --no-install-recommends busybox-static"
ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked: install busybox-static"

mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$out"

# key NAME VALUE...: whether stage NAME was built from VALUE; ok marks it.
stamp() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
built() { [ -f "stamp.$1" ] && [ "$(cat "stamp.$1")" = "$2" ]; }

# 1. The kernel and its modules, keyed on the package's name and version:
#    the ABI number in the name moves with Debian's security updates.
# (No consumer below stops reading early: under pipefail a writer killed by
# SIGPIPE would fail the script.)
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found=1}')
[ -n "$kpkg" ] || die "apt-cache does not know linux-image-amd64's kernel: run apt-get update"
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/{print $2}')
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console evdev button"
kkey=$(stamp "$kpkg" "$kver" "$modules")
if ! built kernel "$kkey"; then
	echo "build.sh: downloading $kpkg $kver" >&2
	rm -rf kdeb mods vmlinuz && mkdir kdeb mods
	(cd kdeb && apt-get download "$kpkg" 2>/dev/null) || die "apt-get download $kpkg failed"
	dpkg-deb --fsys-tarfile kdeb/*.deb | tar -x -C kdeb --wildcards './boot/vmlinuz-*' \
		'./lib/modules/*/kernel/drivers/virtio/*.ko' './lib/modules/*/kernel/drivers/char/virtio_console.ko' \
		'./lib/modules/*/kernel/drivers/input/evdev.ko' './lib/modules/*/kernel/drivers/acpi/button.ko'
	cp kdeb/boot/vmlinuz-* vmlinuz
	for m in $modules; do
		f=$(find kdeb/lib/modules -name "$m.ko" -print -quit)
		[ -n "$f" ] || die "$kpkg has no module $m.ko"
		cp "$f" mods/
	done
	rm -rf kdeb
	echo "$kkey" > stamp.kernel
fi

# 2. The initramfs, keyed on the kernel, the guest's own files and the
#    versions of what is copied in.
qga_version=$(/usr/sbin/qemu-ga --version)
busybox_version=$(/bin/busybox | sed -n 1p)
sources=$(cd "$here" && find build.sh rootfs -type f | sort | xargs sha256sum)
ikey=$(stamp "$kkey" "$qga_version" "$busybox_version" "$sources")
if ! built initramfs "$ikey"; then
	rm -rf root && mkdir -p root/{bin,sbin,proc,sys,dev,run,tmp,var,etc,lib/modules,lib64}
	cp -a "$here/rootfs/." root/
	cp /bin/busybox root/bin/busybox
	ln -s ../bin/busybox root/sbin/hwclock    # guest-set-time runs /sbin/hwclock
	cp mods/*.ko root/lib/modules/
	cp /usr/sbin/qemu-ga root/bin/qemu-ga
	# qemu-ga's libraries where its loader looks without a cache.
	ldd /usr/sbin/qemu-ga | awk '/=> \//{print $3} /^\t\/lib64\//{print $1}' | while read -r lib; do
		case "$lib" in
		/lib64/*) cp -L "$lib" root/lib64/ ;;
		*) mkdir -p "root/lib/x86_64-linux-gnu" && cp -L "$lib" root/lib/x86_64-linux-gnu/ ;;
		esac
	done
	(cd root && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet | gzip -9n) > initramfs.cpio.gz.tmp
	mv initramfs.cpio.gz.tmp initramfs.cpio.gz
	rm -rf root
	echo "$ikey" > stamp.initramfs
fi

# 3. The disk with the two running snapshots, keyed on the initramfs and
#    the QEMU that takes them: a snapshot loads only into the same machine.
qemu_version=$("$qemu" -version | sed -n 1p)
dkey=$(stamp "$ikey" "$qemu_version")

# snapshot NAME ACPI: boot the guest on disk.qcow2.tmp with sandbox.acpi=ACPI,
# wait until its agent listens, save the running guest as NAME.
snapshot() {
	local name=$1 acpi=$2 log="console-$1.log" mon="monitor-$1"
	rm -f "$log" "$mon.in" "$mon.log" qga.sock
	mkfifo "$mon.in"
	"$qemu" -name "guest=build-$name" -machine pc,accel=tcg -m 256 -smp 1 \
		-nodefaults -no-user-config -display none -no-reboot \
		-kernel vmlinuz -initrd initramfs.cpio.gz \
		-append "console=ttyS0 panic=-1 quiet sandbox.acpi=$acpi" \
		-blockdev "driver=file,filename=$out/disk.qcow2.tmp,node-name=disk0-file" \
		-blockdev driver=qcow2,file=disk0-file,node-name=disk0 \
		-device virtio-blk-pci,drive=disk0,id=disk0 \
		-device virtio-serial-pci,id=virtio-serial0 \
		-chardev "socket,id=qga0,path=$out/qga.sock,server=on,wait=off" \
		-device virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0,id=qga0 \
		-serial "file:$out/$log" \
		-monitor stdio <"$mon.in" >"$mon.log" 2>&1 &
	local pid=$! n=0
	exec 3>"$mon.in"
	until grep -q SANDBOX-GUEST-READY "$log" 2>/dev/null; do
		n=$((n + 1))
		if [ "$n" -gt 1200 ] || ! kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			exec 3>&-
			die "the guest ($name) did not get ready in 2 minutes; console:
$(tail -20 "$log" 2>/dev/null)
monitor: $(cat "$mon.log")"
		fi
		sleep 0.1
	done
	if grep -q -e SANDBOX-NO- -e SANDBOX-NOT-OPEN -e SANDBOX-MODULE-FAILED "$log"; then
		kill "$pid"; exec 3>&-
		die "the guest ($name) is incomplete: $(grep -e SANDBOX-NO- -e SANDBOX-NOT-OPEN -e SANDBOX-MODULE-FAILED "$log")"
	fi
	printf 'savevm %s\nquit\n' "$name" >&3
	exec 3>&-
	wait "$pid" || die "QEMU failed while saving $name: $(cat "$mon.log")"
	grep -q '^Error' "$mon.log" && die "savevm $name: $(grep '^Error' "$mon.log")"
	rm -f "$mon.in" qga.sock
	echo "build.sh: snapshot $name: $(grep -o 'SANDBOX-GUEST-READY.*' "$log")" >&2
}

if ! built disk "$dkey" || [ ! -s disk.qcow2 ]; then
	rm -f disk.qcow2 disk.qcow2.tmp
	qemu-img create -q -f qcow2 disk.qcow2.tmp 64M
	snapshot ready honour
	snapshot ready-ignore-acpi ignore
	mv disk.qcow2.tmp disk.qcow2
	echo "$dkey" > stamp.disk
fi

# 4. The slow-restore disk, keyed on the QEMU that writes it and its size.
slow_size=384M
skey=$(stamp slow "$qemu_version" "$slow_size")
if ! built slow "$skey" || [ ! -s slow.qcow2 ]; then
	rm -f slow.qcow2 slow.qcow2.tmp
	qemu-img create -q -f qcow2 -o cluster_size=512 slow.qcow2.tmp 512M
	qemu-io -f qcow2 -c "write -P 0x5a 0 $slow_size" slow.qcow2.tmp >/dev/null
	qemu-img snapshot -c data slow.qcow2.tmp
	mv slow.qcow2.tmp slow.qcow2
	echo "$skey" > stamp.slow
fi

cat > manifest <<EOF
kernel_package=$kpkg
kernel_version=$kver
qemu=$qemu_version
qemu_ga=$qga_version
busybox=$busybox_version
snapshots=ready ready-ignore-acpi
EOF
echo "$out"
