#!/usr/bin/env bash
# `make test-2vm`: two VMs of the plain kernel, joined by QEMU's socket network over
# loopback (a virtio-net card each); the nested Linux guest migrates post-copy, mid-
# workload, from a loader in one VM to a loader in the other (vm/guest/run-2vm). Prints
# KTAP, then "N passed, N failed" and how long it took; the reports land in
# $MUSERLOAD_CACHE/results/2vm-{source,destination}.json.
set -uo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest plain || exit 1
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nic=(-device virtio-net-pci,netdev=net0)
started=$(date +%s)

# The destination's QEMU listens for the other's network; started first, since the other
# connects at once. Nothing else may connect to that port: QEMU takes the first comer.
GUEST_MEM=3G GUEST_APPEND="mlrole=destination" \
	GUEST_QEMU_ARGS="-netdev socket,id=net0,listen=127.0.0.1:$port ${nic[*]},mac=52:54:00:00:00:01" \
	"$here/run-guest.sh" 2vm "$kdir" "$ko" "$payload" "$results/console-2vm-destination.log" \
	>"$results/2vm-destination.txt" &
destination=$!
sleep 3
GUEST_MEM=3G GUEST_APPEND="mlrole=source" \
	GUEST_QEMU_ARGS="-netdev socket,id=net0,connect=127.0.0.1:$port ${nic[*]},mac=52:54:00:00:00:02" \
	"$here/run-guest.sh" 2vm "$kdir" "$ko" "$payload" "$results/console-2vm-source.log" \
	>"$results/2vm-source.txt"
source_status=$?
wait "$destination"
destination_status=$?
took=$(($(date +%s) - started))

# shellcheck source=vm/ktap.sh
. "$here/ktap.sh"
echo "TAP version 13"
echo "1..4"
for side in source destination; do
	echo "# $side VM:"
	sed '/^--- .* ---$/,/^--- end ---$/d; s/^/#   /' "$results/2vm-$side.txt"
	sed -n '/^--- report.json ---$/,/^--- end ---$/p' "$results/2vm-$side.txt" | sed '1d;$d' \
		>"$results/2vm-$side.json"
done
result "$source_status" "source VM: the nested Linux guest migrated to the other VM"
result "$destination_status" "destination VM: the guest ran on and checked all its memory"
"$here/splats.sh" "$results/console-2vm-source.log" >/dev/null
result $? "source VM: no kernel splat"
"$here/splats.sh" "$results/console-2vm-destination.log" >/dev/null
result $? "destination VM: no kernel splat"
echo "# two VMs: ${took} s in all"
finish
