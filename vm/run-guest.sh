#!/usr/bin/env bash
# Packs an initramfs and boots the guest under QEMU (TCG, -cpu max: nested KVM works in the
# guest that way) until it powers off.
#
#   vm/run-guest.sh MODE KDIR MODULE PAYLOAD LOG
#
# MODE     test (run vm/guest/run-tests, KTAP on stdout), demo, bench, 2vm, fuzz, or shell
#          (interactive)
# KDIR     a built kernel tree (vm/build-kernel.sh)
# MODULE   muserload.ko built against it
# PAYLOAD  a directory whose tests/ and bin/ go into the guest's /tests and /bin
# LOG      the kernel's serial console log (ttyS0) is written here
#
# The guest's ttyS1 is this script's stdout. Environment: GUEST_MEM (default 4G),
# GUEST_CPUS (2), GUEST_TIMEOUT in seconds (1200), GUEST_APPEND (more of the kernel command
# line; init sees its name=value words as environment variables), GUEST_QEMU_ARGS (more
# QEMU options, split at spaces: vm/test-2vm.sh's network).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=$1 kdir=$2 module=$3 payload=$4 log=$5

# A stale log must not stand in for this run's.
rm -f "$log"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# mktemp makes a 0700 directory, which would be the guest's / and lock out other users.
chmod 755 "$root"
mkdir -p "$root"/{bin,lib,tests,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/busybox"
cp "$here/guest/init" "$root/init"
cp "$here/guest/run-tests" "$here/guest/run-demo" "$here/guest/run-bench" \
	"$here/guest/run-bench-migrate" "$here/guest/run-fuzz" "$here/guest/run-2vm" "$root/bin/"
cp "$module" "$root/lib/muserload.ko"
[[ -d "$payload/tests" ]] && cp -a "$payload/tests/." "$root/tests/"
[[ -d "$payload/bin" ]] && cp -a "$payload/bin/." "$root/bin/"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$root.cpio.gz"
trap 'rm -rf "$root" "$root.cpio.gz"' EXIT

qemu=(qemu-system-x86_64 -machine q35 -accel tcg -cpu max
	-smp "${GUEST_CPUS:-2}" -m "${GUEST_MEM:-4G}"
	-kernel "$kdir/arch/x86/boot/bzImage" -initrd "$root.cpio.gz"
	-display none -no-reboot)
# shellcheck disable=SC2206 # options, split at spaces on purpose
qemu+=(${GUEST_QEMU_ARGS:-})
# no5lvl: with TCG's 5-level paging, KASAN reports a wild access in an early interrupt
# (before the module exists), which also turns lockdep off for the whole run.
# no_timer_check: on a loaded host TCG's timer can miss the IO-APIC check's deadline,
# which panics the boot ("IO-APIC + timer doesn't work"); the timer works.
cmdline="console=ttyS0 panic=-1 no5lvl no_timer_check mlmode=$mode ${GUEST_APPEND:-}"

if [[ "$mode" == shell ]]; then
	"${qemu[@]}" -append "$cmdline" -serial mon:stdio
	exit
fi
timeout -k 10 "${GUEST_TIMEOUT:-1200}" "${qemu[@]}" -append "$cmdline" -monitor none \
	-serial "file:$log" -serial stdio </dev/null | tr -d '\r'
exit "${PIPESTATUS[0]}"
