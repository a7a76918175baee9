#!/usr/bin/env bash
# `make demo`: boots the plain (non-debug) guest, and in it migrates the loader's test
# guest post-copy between two muserload-loader processes (vm/guest/run-demo), printing
# both reports. DEMO_MODE=queue|signal picks the fault mode (default queue). The reports
# land in $MUSERLOAD_CACHE/results/demo-{source,destination}.json too.
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest plain
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
log="$results/console-demo.log" raw="$results/demo.txt"
echo "[demo] booting the guest (console: $log)" >&2
status=0
GUEST_APPEND="mldemo=${DEMO_MODE:-queue}" "$here/run-guest.sh" demo "$kdir" "$ko" "$payload" \
	"$log" | tee "$raw" | sed '/^--- .*json ---$/,/^--- end ---$/d' || status=$?
for side in source destination; do
	sed -n "/^--- $side.json ---\$/,/^--- end ---\$/p" "$raw" | sed '1d;$d' \
		>"$results/demo-$side.json"
done
"$here/splats.sh" "$log"
exit "$status"
