#!/usr/bin/env bash
# `make demo`: boots the plain (non-debug) guest, and in it migrates a nested Linux guest
# mid-workload post-copy between two muserload-loader processes (vm/guest/run-demo),
# printing the guest's console on both sides and both reports. DEMO_MODE=queue|signal
# picks the fault mode (default queue), DEMO_GUEST=linux|test the guest (default linux).
# The reports and the timeline land in $MUSERLOAD_CACHE/results/demo-{source.json,
# destination.json,timeline.svg} too.
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest plain
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
log="$results/console-demo.log" raw="$results/demo.txt"
echo "[demo] booting the guest (console: $log)" >&2
status=0
GUEST_APPEND="mldemo=${DEMO_MODE:-queue} mlguest=${DEMO_GUEST:-linux}" "$here/run-guest.sh" \
	demo "$kdir" "$ko" "$payload" "$log" | tee "$raw" |
	sed '/^--- .* ---$/,/^--- end ---$/d' || status=$?
for file in source.json destination.json timeline.svg; do
	sed -n "/^--- $file ---\$/,/^--- end ---\$/p" "$raw" | sed '1d;$d' >"$results/demo-$file"
done
echo "[demo] reports and timeline: $results/demo-{source.json,destination.json,timeline.svg}" >&2
"$here/splats.sh" "$log"
exit "$status"
