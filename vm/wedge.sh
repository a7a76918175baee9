#!/usr/bin/env bash
# Weighs the evidence of a test guest's boot that ended in the middle of test program K
# (vm/test.sh): prints it, and exits 0 when it clears muserload, that is when the kernel
# wedged on its own (QEMU's emulated SVM), 1 when it does not.
#
#   vm/wedge.sh LOG K KDIR
#
# LOG   the boot's serial console log; KDIR its kernel tree (System.map, vmlinux). The vCPU
#       samples are in LOG's hang file (vm/run-guest.sh), if the host took any.
#
# Three kinds of evidence clear muserload:
# - stacks: the kernel printed stacks after program K started, and no frame the unwinder
#   trusts has a muserload symbol (the module's, or a Rust symbol of its crate). Frames
#   marked "? " are not calls: they are stale words the unwinder found on the stack (a vCPU
#   thread's stack holds the module's fault handler's addresses from its last fault).
# - a vCPU stuck where QEMU's SVM goes wrong: no stack at all (the NMI was not taken), and
#   in both samples taken seconds apart one vCPU's RIP is the same instruction, the one
#   right after a VMRUN or STGI (the global interrupt flag's edges, where QEMU has delivered
#   interrupts it must hold back and has stopped a vCPU), and no vCPU's RIP is outside the
#   kernel's own text (a module's code).
# - an NMI no vCPU took: no stack, the host's NMI left the console as it was for 60 s, no
#   vCPU was on an exception stack (in an NMI handler, which holds the next NMI back) or
#   outside the kernel's text in either sample. Only the global interrupt flag holds an NMI
#   back otherwise, and the kernel clears it only around KVM's VMRUN: QEMU's SVM has lost
#   it (two runs: vCPU 1 halted with interrupts on throughout, vCPU 0 with them off sending
#   itself a reschedule IPI, then faulting on the kernel's own text in __show_regs).
set -uo pipefail
log=$1 k=$2 kdir=$3
hang="${log%.log}-hang.txt"

# Stack-trace lines from where program K started.
stacks=$(sed -n "/muserload-test: program $k /,\$p" "$log" |
	grep -E '\+0x[0-9a-f]+/0x[0-9a-f]+')
trusted=$(grep -vE '^\[ *[0-9.]+\] +\? ' <<<"$stacks" | grep -E .)
ours=$(grep muserload <<<"$trusted")
echo "$(grep -c . <<<"$stacks") stack lines printed after program $k started," \
	"$(grep -c . <<<"$trusted") of them frames the unwinder trusts," \
	"$(grep -c . <<<"$ours") of those muserload's"
if [[ -n "$ours" ]]; then
	echo "muserload's trusted frames:"
	head -n 20 <<<"$ours"
	exit 1
fi
if [[ -n "$trusted" ]]; then
	echo "the trusted frames, each once, in the order they came (the first 40):"
	sed 's/^\[[^]]*\] *//' <<<"$trusted" | awk '!seen[$0]++' | head -n 40
	exit 0
fi

# No stack: the vCPUs' samples. Addresses of one width compare as strings (System.map is
# sorted).
symbol() { # symbol RIP: "NAME ADDRESS" of the kernel's text symbol at or below RIP, if any
	awk -v rip="$1" '$2 ~ /^[tT]$/ && $1 <= rip { addr = $1; name = $3 }
		$3 == "_etext" { if (rip >= $1) addr = ""; exit }
		END { if (addr != "") print name, addr }' "$kdir/System.map"
}
before() { # before RIP START: the mnemonic of the instruction that ends at RIP
	objdump -d --no-show-raw-insn --start-address="0x$2" --stop-address="0x$1" \
		"$kdir/vmlinux" | awk -F'\t' 'NF >= 2 { op = $2 } END { split(op, w, " "); print w[1] }'
}
[[ -s "$hang" ]] || {
	echo "no stack and no vCPU sample: nothing clears muserload"
	exit 1
}
declare -A first=() last=() stack=()
while read -r sample cpu rip rsp; do
	[[ "$sample" == 1 ]] && first[$cpu]=$rip
	[[ "$sample" == 2 ]] && last[$cpu]=$rip
	[[ "$rsp" == fffffe* ]] && stack[$cpu]=$rsp
done < <(awk '/^sample / { s = $2 } /^CPU#/ { c = substr($1, 5) }
	match($0, /RSP=[0-9a-f]+/) { sp = substr($0, RSTART + 4, RLENGTH - 4) }
	match($0, /RIP=[0-9a-f]+/) { print s, c, substr($0, RSTART + 4, RLENGTH - 4), sp }' "$hang")
stuck="" foreign=""
for cpu in $(printf '%s\n' "${!first[@]}" | sort -n); do
	rip=${first[$cpu]} name="" start=""
	if [[ -n "${last[$cpu]:-}" && -z "$(symbol "${last[$cpu]}")" ]]; then
		echo "vCPU $cpu: RIP ${last[$cpu]} in the second sample, outside the kernel's text"
		foreign=1
	fi
	read -r name start < <(symbol "$rip")
	if [[ -z "$name" ]]; then
		echo "vCPU $cpu: RIP $rip, outside the kernel's text"
		foreign=1
		continue
	fi
	op=$(before "$rip" "$start")
	echo "vCPU $cpu: RIP $rip ($name+0x$(printf %x $((0x$rip - 0x$start))), after ${op:-?})," \
		"$([[ "${last[$cpu]:-}" == "$rip" ]] && echo "the same" || echo "${last[$cpu]:-none}")" \
		"in the second sample"
	[[ "${last[$cpu]:-}" == "$rip" && "$op" =~ ^(vmrun|stgi)$ ]] && stuck=1
done
if [[ -n "$foreign" ]]; then
	echo "a vCPU outside the kernel's text (a module's code?): nothing clears muserload"
	exit 1
fi
if [[ -n "$stuck" ]]; then
	echo "a vCPU stuck right after VMRUN or STGI: QEMU's SVM"
	exit 0
fi
# The NMI: a kernel holds one back only while it runs an NMI (or another IST) handler, on
# the cpu_entry_area stacks; otherwise only the global interrupt flag does, which the
# kernel clears only for KVM's VMRUN, a few instructions before setting it again.
grep -h '^nmi: ' "$hang"
if grep -q '^nmi: not taken' "$hang"; then
	if ((${#stack[@]})); then
		for cpu in "${!stack[@]}"; do
			echo "vCPU $cpu: RSP ${stack[$cpu]}, on an exception stack (an NMI handler?)"
		done
		echo "the NMI was held back by a handler: nothing clears muserload"
		exit 1
	fi
	echo "no vCPU took the NMI, none in a handler or a module's code: QEMU's SVM"
	exit 0
fi
echo "no stack, no vCPU stuck right after VMRUN or STGI, the NMI taken: nothing clears muserload"
exit 1
