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

# A guest that outlives GUEST_TIMEOUT is hung: before it is killed, the host asks QEMU where
# its vCPUs are (a QEMU that does not answer is itself hung) and sends an NMI, which
# unknown_nmi_panic turns into a panic that prints every task's stack and every CPU's
# backtrace to the console log (panic_sys_info). Exit status 124, as
# timeout(1)'s. The guest's output goes out a line at a time (stdbuf: tr would hold it
# back in blocks when writing to a pipe or file), so that a hang shows where it is.
cmdline+=" unknown_nmi_panic panic_sys_info=tasks,locks,all_bt"
mkfifo "$root.mon.in" "$root.mon.out"
trap 'rm -rf "$root" "$root.cpio.gz" "$root.mon.in" "$root.mon.out"' EXIT
"${qemu[@]}" -append "$cmdline" -chardev "pipe,id=monitor,path=$root.mon" -mon monitor \
	-serial "file:$log" -serial stdio </dev/null > >(stdbuf -oL tr -d '\r') &
qemu_pid=$!
deadline=$((SECONDS + ${GUEST_TIMEOUT:-1200}))
while kill -0 "$qemu_pid" 2>/dev/null && ((SECONDS < deadline)); do
	sleep 1
done
if ! kill -0 "$qemu_pid" 2>/dev/null; then
	wait "$qemu_pid"
	exit
fi
hang="${log%.log}-hang.txt"
echo "run-guest: the guest outlived ${GUEST_TIMEOUT:-1200} s: its vCPUs in $hang," \
	"the kernel's tasks in $log" >&2
echo "info registers -a" >"$root.mon.in"
# The monitor echoes what it is sent, a key at a time: only the answer is kept.
timeout 5 cat "$root.mon.out" | grep -v "(qemu)" >"$hang" || true
# Each vCPU's RIP, by the kernel's nearest symbol below it (System.map is sorted; addresses
# of one width compare as strings).
grep -oE 'RIP=[0-9a-f]{16}' "$hang" | cut -d= -f2 | while read -r rip; do
	read -r addr name < <(awk -v rip="$rip" '$1 <= rip { addr = $1; name = $3 }
		END { print addr, name }' "$kdir/System.map")
	printf 'vCPU RIP %s: %s+0x%x\n' "$rip" "${name:-?}" $((0x$rip - 0x${addr:-0}))
done | tee -a "$hang" >&2
echo nmi >"$root.mon.in"
for _ in $(seq 60); do
	kill -0 "$qemu_pid" 2>/dev/null || break
	sleep 1
done
kill "$qemu_pid" 2>/dev/null || true
wait "$qemu_pid" || true
exit 124
