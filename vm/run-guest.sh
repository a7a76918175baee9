#!/usr/bin/env bash
# Packs an initramfs and boots the guest under QEMU (TCG, -cpu max: nested KVM works in the
# guest that way) until it powers off.
#
#   vm/run-guest.sh MODE KDIR MODULE PAYLOAD LOG
#
# MODE     test (run vm/guest/run-tests, KTAP on stdout), demo, bench, bench-migrate,
#          bench-vcpus, 2vm, fuzz, or shell (interactive)
# KDIR     a built kernel tree (vm/build-kernel.sh)
# MODULE   muserload.ko built against it
# PAYLOAD  a directory whose tests/ and bin/ go into the guest's /tests and /bin
# LOG      the kernel's serial console log (ttyS0) is written here
#
# The guest's ttyS1 is this script's stdout. Environment: GUEST_MEM (default 4G),
# GUEST_CPUS (2), GUEST_TIMEOUT in seconds (1200), GUEST_SILENCE in seconds (180: a console
# silent that long is a wedged guest, test mode only), GUEST_APPEND (more of the kernel
# command line; init sees its name=value words as environment variables), GUEST_QEMU_ARGS
# (more QEMU options, split at spaces: vm/test-2vm.sh's network).
#
# Exit status: QEMU's (0 when the guest reset itself: its end, or a panic), or 124 when the
# guest outlived GUEST_TIMEOUT or went silent; then the console log has every task's stack.
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
	"$here/guest/run-bench-migrate" "$here/guest/run-bench-vcpus" "$here/guest/run-fuzz" \
	"$here/guest/run-2vm" "$root/bin/"
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
# kvm.tsc_tolerance_ppm: TCG's CPU has no invariant TSC, so KVM, built in, takes the TSC
# rate of every vCPU it will create from the kernel's early TSC calibration when it starts,
# before the refined calibration replaces the kernel's own. Apart by more than KVM's
# tolerance (250 ppm by default), under TCG now and then, that rate needs TSC scaling, which
# QEMU's SVM lacks: KVM then leaves each new vCPU's TSC scaling ratio at 0 ("kvm: user
# requested TSC rate below hardware speed"), kvmclock is stamped at TSC 0, and a nested
# guest's clock jumps forward by its VM's age when it is migrated. The refinement is kept
# only within 1% of the early rate, at most 10101 ppm of the refined one: this covers it.
# tsc=reliable: under TCG the emulated HPET and TSC drift apart by 0.1% now and then (one
# run: 508.6 ms of HPET against 509.1 ms of TSC), and the clocksource watchdog then marks
# the TSC unstable and switches to the HPET. KVM loses its master clock with it, a nested
# guest's kvmclock follows the HPET while its TSC follows the TSC, and the nested guest's
# own watchdog marks its TSC unstable, which fails a migration test's clock check. The
# emulated TSC is the reference here: no watchdog on it.
cmdline="console=ttyS0 panic=-1 no5lvl no_timer_check kvm.tsc_tolerance_ppm=10200"
cmdline+=" tsc=reliable"
cmdline+=" mlmode=$mode ${GUEST_APPEND:-}"

if [[ "$mode" == shell ]]; then
	"${qemu[@]}" -append "$cmdline" -serial mon:stdio
	exit
fi

# A guest that outlives GUEST_TIMEOUT is hung: before it is killed, the host asks QEMU where
# its vCPUs are, twice (a QEMU that does not answer is itself hung), and sends an NMI, which
# unknown_nmi_panic turns into a panic that prints every task's stack and every CPU's
# backtrace to the console log (panic_sys_info). Exit status 124, as
# timeout(1)'s. The guest's output goes out a line at a time (stdbuf: tr would hold it
# back in blocks when writing to a pipe or file), so that a hang shows where it is.
cmdline+=" unknown_nmi_panic panic_sys_info=tasks,locks,all_bt"
# A wedged kernel ends the boot within minutes, its stacks in the log, instead of sitting
# until the timeout: its lockup and stall detectors panic (QEMU's emulated SVM has wedged
# the guest's kernel with interrupts delivered while they were off: an RCU stall, a
# runqueue lock spun on, tasks blocked on SRCU). Their thresholds are raised above what a
# loaded host's TCG makes of a busy guest (soft lockup after 60 s, RCU stall after 60 s).
# A kernel this fails to end goes silent: test mode's heartbeat stops and the host sees it.
cmdline+=" softlockup_panic=1 watchdog_thresh=30 hung_task_panic=1"
cmdline+=" rcupdate.rcu_cpu_stall_timeout=60 sysctl.kernel.panic_on_rcu_stall=1"
mkfifo "$root.mon.in" "$root.mon.out"
trap 'rm -rf "$root" "$root.cpio.gz" "$root.mon.in" "$root.mon.out"' EXIT
"${qemu[@]}" -append "$cmdline" -chardev "pipe,id=monitor,path=$root.mon" -mon monitor \
	-serial "file:$log" -serial stdio </dev/null > >(stdbuf -oL tr -d '\r') &
qemu_pid=$!
deadline=$((SECONDS + ${GUEST_TIMEOUT:-1200}))
# Only the test suite writes a heartbeat (vm/guest/run-tests); other modes may be quiet.
# How many bytes the guest's console has written so far.
console_size() {
	stat -c %s "$log" 2>/dev/null || echo 0
}
silence=0
[[ "$mode" == test ]] && silence=${GUEST_SILENCE:-180}
heard=$SECONDS size=0
why=""
while kill -0 "$qemu_pid" 2>/dev/null; do
	if ((SECONDS >= deadline)); then
		why="outlived ${GUEST_TIMEOUT:-1200} s"
		break
	fi
	now=$(console_size)
	((now != size)) && heard=$SECONDS size=$now
	if ((silence && SECONDS - heard >= silence)); then
		why="was silent for $silence s (no heartbeat on its console)"
		break
	fi
	sleep 1
done
if [[ -z "$why" ]]; then
	wait "$qemu_pid"
	exit
fi
hang="${log%.log}-hang.txt"
echo "run-guest: the guest $why: its vCPUs in $hang, the kernel's tasks in $log" >&2
# Two samples of every vCPU's registers, 5 s apart (vm/wedge.sh reads them): the monitor
# echoes what it is sent, a key at a time, so only the answer is kept.
for sample in 1 2; do
	echo "sample $sample"
	echo "info registers -a" >"$root.mon.in"
	timeout 5 cat "$root.mon.out" | grep -v "(qemu)" || true
done >"$hang"
# Whether the kernel took the NMI (vm/wedge.sh weighs it): a kernel that took it panics,
# prints and ends QEMU (-no-reboot); one that did not leaves its console as it was.
size=$(console_size)
echo nmi >"$root.mon.in"
for _ in $(seq 60); do
	kill -0 "$qemu_pid" 2>/dev/null || break
	sleep 1
done
if kill -0 "$qemu_pid" 2>/dev/null && (($(console_size) == size)); then
	echo "nmi: not taken (in 60 s the console stayed at $size bytes and QEMU ran on)"
else
	echo "nmi: taken"
fi >>"$hang"
kill "$qemu_pid" 2>/dev/null || true
wait "$qemu_pid" || true
exit 124
