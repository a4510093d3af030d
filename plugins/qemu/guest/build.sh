#!/usr/bin/env bash
# Builds the QEMU test guest from Debian's packages into OUT (default: the
# git-ignored plugins/qemu/guest/cache), reusing what an earlier run built
# for the same inputs:
#
#   vmlinuz                 the kernel of the package linux-image-amd64 depends on
#   initramfs.cpio.gz       busybox, qemu-ga with its libraries, the virtio,
#                           ext4, evdev and button modules, and the init
#   scanners.qcow2          the scanners' read-only ext4 filesystem, which the
#                           guest mounts on /usr: ClamAV's clamscan and YARA
#                           from Debian's packages, with the libraries the
#                           initramfs lacks, a ClamAV database built here by
#                           sigtool and YARA rules compiled here by yarac
#                           (signatures/ has the hand-written ones)
#   disk.qcow2              scanners.qcow2 holding two snapshots taken with
#                           the guest running and its agent answering:
#                             ready              the guest honours the power button
#                             ready-ignore-acpi  the guest ignores it
#   testfiles/              ClamAV's 44 test files (Debian's clamav-testfiles),
#                           for the tests and the demo; never in the guest
#   slow.qcow2              the conformance suite's slow-restore disk: 384 MiB
#                           written in 512-byte clusters before its disk-only
#                           snapshot "data", so that reverting it walks
#                           786432 clusters (two seconds or more, well over
#                           the suite's one-second margin)
#   manifest                what it was built from
#
# Needs, from Debian: qemu-system-x86 qemu-utils qemu-guest-agent
# busybox-static cpio e2fsprogs, and apt-get's package lists (apt-get
# update). The kernel, ClamAV and YARA packages are downloaded and
# unpacked here, never installed; so are the libraries they need that the
# host lacks.
#
# The EICAR anti-virus test file is put together here from two halves, so
# that no file of the repository is itself the test file.
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
need mke2fs "apt-get install --no-install-recommends e2fsprogs"
[ -x /usr/sbin/qemu-ga ] || die "/usr/sbin/qemu-ga is missing: apt-get install --no-install-recommends qemu-guest-agent"
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install --no-install-recommends busybox-static"
ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked: install busybox-static"

mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$out"

# The QEMU and libvirt drivers' test binaries each run this script, at the
# same time under `make test`: the second waits here for the first and then
# finds what it built, instead of both writing the same files.
need flock "apt-get install util-linux"
exec 8>"$out/.build.lock"
flock 8 || die "cannot lock $out/.build.lock"

# key NAME VALUE...: whether stage NAME was built from VALUE; ok marks it.
stamp() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
built() { [ -f "stamp.$1" ] && [ "$(cat "stamp.$1")" = "$2" ]; }

# 1. The kernel and its modules, keyed on the package's name and version:
#    the ABI number in the name moves with Debian's security updates.
# (No consumer below stops reading early: under pipefail a writer killed by
# SIGPIPE would fail the script.)
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !found {print $2; found=1}')
[ -n "$kpkg" ] || die "apt-cache does not know linux-image-amd64's kernel: run apt-get update"
# The versions of what is downloaded, in one apt-cache call: PACKAGE=VERSION.
scan_pkgs="clamav yara clamav-testfiles"
versions=$(apt-cache policy "$kpkg" $scan_pkgs 2>/dev/null | awk '/^[^ ].*:$/ {p = substr($0, 1, length($0) - 1)} /Candidate:/ {print p "=" $2}')
for p in "$kpkg" $scan_pkgs; do
	grep -q "^$p=[0-9]" <<<"$versions" || die "apt-cache does not know $p: run apt-get update"
done
kver=$(grep "^$kpkg=" <<<"$versions" | cut -d= -f2-)

# In the order the init loads them (dependencies first); rootfs/init has
# the same list.
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console virtio_blk crc16 crc32c_generic mbcache jbd2 ext4 evdev button"
kkey=$(stamp "$kpkg" "$kver" "$modules")
if ! built kernel "$kkey"; then
	echo "build.sh: downloading $kpkg $kver" >&2
	rm -rf kdeb mods vmlinuz && mkdir kdeb mods
	(cd kdeb && apt-get download "$kpkg" 2>/dev/null) || die "apt-get download $kpkg failed"
	dpkg-deb --fsys-tarfile kdeb/*.deb | tar -x -C kdeb --wildcards './boot/vmlinuz-*' \
		'./lib/modules/*/kernel/drivers/virtio/*.ko' './lib/modules/*/kernel/drivers/char/virtio_console.ko' \
		'./lib/modules/*/kernel/drivers/block/virtio_blk.ko' './lib/modules/*/kernel/lib/crc16.ko' './lib/modules/*/kernel/crypto/crc32c_generic.ko' \
		'./lib/modules/*/kernel/fs/mbcache.ko' './lib/modules/*/kernel/fs/jbd2/jbd2.ko' './lib/modules/*/kernel/fs/ext4/ext4.ko' \
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

# libs_of BINARY...: the libraries the loader finds for them, as ldd lists
# them (LD_LIBRARY_PATH first), the loader itself included.
libs_of() {
	ldd "$@" | awk '/=> \//{print $3} /^\t\/lib64\//{print $1}' | sort -u
}

# 2. The initramfs, keyed on the kernel, the guest's own files and the
#    versions of what is copied in.
qga_version=$(/usr/sbin/qemu-ga --version)
busybox_version=$(/bin/busybox | sed -n 1p)
sources=$(cd "$here" && find build.sh rootfs -type f | sort | xargs sha256sum)
ikey=$(stamp "$kkey" "$qga_version" "$busybox_version" "$sources")
if ! built initramfs "$ikey"; then
	rm -rf root && mkdir -p root/{bin,sbin,proc,sys,dev,run,tmp,usr,var/lib,etc,lib/modules,lib64}
	cp -a "$here/rootfs/." root/
	cp /bin/busybox root/bin/busybox
	ln -s ../bin/busybox root/sbin/hwclock    # guest-set-time runs /sbin/hwclock
	ln -s /usr/share/clamav root/var/lib/clamav   # clamscan's database, on the scanners' disk
	cp mods/*.ko root/lib/modules/
	cp /usr/sbin/qemu-ga root/bin/qemu-ga
	# qemu-ga's libraries where its loader looks without a cache.
	libs_of /usr/sbin/qemu-ga | while read -r lib; do
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

# 3. The scanners' filesystem, keyed on the packages' versions and the
#    signatures. ClamAV and YARA live on the VM's disk rather than in the
#    initramfs: the initramfs is RAM for the guest's whole life, while a
#    file on the disk costs RAM only for the pages a scan reads (libclamav
#    pulls in 31 MB of ICU data through libxml2, which a scan seldom reads).
scan_versions=$(grep -v "^$kpkg=" <<<"$versions")
signatures=$(cd "$here" && find signatures -type f | sort | xargs -r sha256sum)
skey=$(stamp "$ikey" "$scan_versions" "$signatures")

# deb_depends DEB...: the packages named lib* that the packages depend on
# (the first of alternatives).
deb_depends() {
	for d in "$@"; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' |
		sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/ //g' | grep '^lib' | sort -u
}

# hexof: stdin as the lower-case hex of its bytes, in one line.
hexof() { od -An -v -tx1 | tr -d ' \n'; }

if ! built scanners "$skey" || [ ! -s scanners.qcow2 ]; then
	echo "build.sh: downloading and unpacking $(echo $scan_pkgs)" >&2
	rm -rf sdeb sroot tree testfiles scanners.ext4 && mkdir sdeb sroot tree testfiles
	(cd sdeb && apt-get download $scan_pkgs 2>/dev/null) || die "apt-get download $scan_pkgs failed"
	libpkgs=$(deb_depends sdeb/clamav_*.deb sdeb/yara_*.deb | grep -e '^libclamav' -e '^libyara') || true
	[ -n "$libpkgs" ] || die "the clamav and yara packages name no libclamav or libyara"
	(cd sdeb && apt-get download $libpkgs 2>/dev/null) || die "apt-get download $(echo $libpkgs) failed"
	for d in sdeb/*.deb; do dpkg-deb -x "$d" sroot; done
	bins="sroot/usr/bin/clamscan sroot/usr/bin/sigtool sroot/usr/bin/yara sroot/usr/bin/yarac"
	for b in $bins; do [ -x "$b" ] || die "the packages have no ${b#sroot}"; done
	export LD_LIBRARY_PATH="$out/sroot/usr/lib/x86_64-linux-gnu:$out/sroot/lib/x86_64-linux-gnu"
	# The libraries the host lacks: each round fetches the libraries the
	# packages fetched so far depend on, until the loader finds them all.
	for round in 1 2 3 4 5; do
		missing=$(ldd $bins | awk '/not found/{print $1}' | sort -u)
		[ -z "$missing" ] && break
		[ "$round" = 5 ] && die "no library package has $(echo $missing)"
		# Not one the host has: its libc must stay the loader's.
		have=$( (for d in sdeb/*.deb; do dpkg-deb -f "$d" Package; done
			dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sed 's/:.*//') | sort -u)
		want=$(deb_depends sdeb/*.deb | comm -23 - <(echo "$have"))
		[ -n "$want" ] || die "no package that ClamAV or YARA depends on has $(echo $missing)"
		echo "build.sh: the host lacks $(echo $missing); downloading $(echo $want)" >&2
		mkdir -p sdeb/more && (cd sdeb/more && apt-get download $want 2>/dev/null) || die "apt-get download $(echo $want) failed"
		for d in sdeb/more/*.deb; do dpkg-deb -x "$d" sroot; mv "$d" sdeb/; done
	done

	# The signatures, made here from files made here: ClamAV's test
	# program clam.exe (ClamAV finds all 44 test files with it, since it
	# unpacks them) and the EICAR file.
	cp sroot/usr/share/clamav-testfiles/* testfiles/
	[ "$(ls testfiles | wc -l)" -gt 0 ] && [ -s testfiles/clam.exe ] || die "clamav-testfiles has no clam.exe"
	printf '%s%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > sdeb/eicar.com
	mkdir -p tree/bin tree/lib/x86_64-linux-gnu tree/share/clamav tree/share/yara
	sig() { sroot/usr/bin/sigtool "$@" | awk -F: -v name="$name" 'NF == 3 {print $1 ":" $2 ":" name}'; }
	{
		name=Sandbox.Test.EICAR-HDB sig --md5 sdeb/eicar.com
		name=Sandbox.Test.ClamAVTestFile sig --sha256 testfiles/clam.exe
	} > tree/share/clamav/sandbox-test.hdb
	echo "Sandbox.Test.EICAR-NDB:0:*:$(hexof < sdeb/eicar.com)" > tree/share/clamav/sandbox-test.ndb
	[ "$(wc -l < tree/share/clamav/sandbox-test.hdb)" = 2 ] || die "sigtool made no hash signatures"
	{
		echo '// Made by build.sh: the EICAR anti-virus test file and ClamAV'"'"'s test program.'
		echo 'import "hash"'
		echo 'rule Sandbox_Test_EICAR { strings: $eicar = { '"$(hexof < sdeb/eicar.com | sed 's/../& /g')"'} condition: $eicar at 0 }'
		echo 'rule Sandbox_Test_ClamAVTestFile { condition: filesize == '"$(wc -c < testfiles/clam.exe)"' and hash.sha256(0, filesize) == "'"$(sha256sum testfiles/clam.exe | cut -c1-64)"'" }'
	} > tree/share/yara/sandbox-test.yar
	# The hand-written ones: ClamAV's formats by their extension, YARA's .yar.
	for f in "$here"/signatures/*; do
		case "$f" in
		*.hdb | *.hsb | *.mdb | *.msb | *.ndb | *.ldb | *.cdb | *.fp | *.sfp | *.ign2 | *.idb | *.pdb | *.wdb | *.cbc | *.ftm | *.crb)
			cp "$f" tree/share/clamav/ ;;
		*.yar) cp "$f" tree/share/yara/ ;;
		esac
	done
	sroot/usr/bin/yarac tree/share/yara/*.yar tree/share/yara/rules.yarc || die "yarac could not compile the YARA rules"
	# A database clamscan cannot load would make every scan an error
	# (exit 2): try it here, where its message can be read.
	rc=0
	sroot/usr/bin/clamscan --no-summary --database=tree/share/clamav sdeb/eicar.com >clamscan.out 2>&1 || rc=$?
	[ "$rc" = 1 ] || die "clamscan with the database of tree/share/clamav exits $rc on the EICAR file, not 1: $(cat clamscan.out)"
	rm -f clamscan.out

	# The scanners, and the libraries they need that the initramfs has not.
	cp sroot/usr/bin/clamscan sroot/usr/bin/yara tree/bin/
	initramfs_libs=$(libs_of /usr/sbin/qemu-ga | xargs -n1 basename)
	libs_of sroot/usr/bin/clamscan sroot/usr/bin/yara | while read -r lib; do
		grep -qx "$(basename "$lib")" <<<"$initramfs_libs" || cp -L "$lib" tree/lib/x86_64-linux-gnu/
	done
	unset LD_LIBRARY_PATH
	# Read-only, no journal: the guest never writes to it, so every
	# snapshot of the disk stays true. qcow2's compressed clusters keep it
	# small; QEMU inflates them on the host.
	kib=$(du -sk tree | cut -f1)
	mke2fs -q -t ext4 -O ^has_journal,^metadata_csum -L scanners -m 0 -E root_owner=0:0 -d tree scanners.ext4 $((kib * 6 / 5 + 4096))K >/dev/null ||
		die "mke2fs could not make the scanners' filesystem"
	qemu-img convert -c -O qcow2 scanners.ext4 scanners.qcow2.tmp
	mv scanners.qcow2.tmp scanners.qcow2
	rm -rf sdeb sroot tree scanners.ext4
	echo "$skey" > stamp.scanners
fi

# 4. The disk with the two running snapshots, keyed on the scanners (and
#    so the initramfs) and the QEMU that takes them: a snapshot loads only
#    into the same machine.
qemu_version=$("$qemu" -version | sed -n 1p)
dkey=$(stamp "$skey" "$qemu_version")

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
		-monitor stdio <"$mon.in" >"$mon.log" 2>&1 8>&- &
	local pid=$! n=0
	exec 3>"$mon.in"
	until grep -q SANDBOX-GUEST-READY "$log" 2>/dev/null; do
		n=$((n + 1))
		if [ "$n" -gt 1200 ] || ! kill -0 "$pid" 2>/dev/null; then
			local why="did not get ready in 2 minutes"
			kill -0 "$pid" 2>/dev/null || why="ended before it was ready (QEMU exited)"
			kill "$pid" 2>/dev/null || true
			exec 3>&-
			die "the guest ($name) $why; console:
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
	cp scanners.qcow2 disk.qcow2.tmp
	snapshot ready honour
	snapshot ready-ignore-acpi ignore
	mv disk.qcow2.tmp disk.qcow2
	echo "$dkey" > stamp.disk
fi

# 5. The slow-restore disk, keyed on the QEMU that writes it and its size.
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
$scan_versions
snapshots=ready ready-ignore-acpi
EOF
echo "$out"
