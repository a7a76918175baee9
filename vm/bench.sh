#!/usr/bin/env bash
# `make bench`: muserload against userfaultfd in one boot of the plain (non-debug) kernel.
# Prints the table; writes it, the JSON and an SVG plot to $MUSERLOAD_CACHE/results/.
#
# `vm/bench.sh --profile [GROUP]` (make bench-profile): the cases (of one group: queue,
# signal, scaling, bulk, move) with perf sampling every CPU; prints the table and where each
# case's time went, side by side, into $MUSERLOAD_CACHE/results/bench-profile.txt.
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
append=""
if [[ "${1:-}" == --profile ]]; then
	append="mlprofile=${2:-all}"
fi
prepare_guest plain
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
console="$results/console-bench.log"
echo "[bench] booting the plain guest${append:+ ($append)} (console: $console)" >&2
raw="$results/bench.txt.raw"
[[ -z "$append" ]] || raw="$results/bench-profile.txt"
GUEST_CPUS=${GUEST_CPUS:-2} GUEST_APPEND="$append" "$here/run-guest.sh" bench "$kdir" "$ko" \
	"$payload" "$console" | tee "$raw"
"$here/splats.sh" "$console"
if [[ -n "$append" ]]; then
	grep -q '^## ' "$raw" || { echo "[bench] error: no profiles" >&2; exit 1; }
	echo "[bench] profiles: $raw" >&2
	exit
fi
out="$results/bench.txt"
sed -n '/^--- bench.json ---$/,/^--- end ---$/p' "$raw" | sed '1d;$d' >"$results/bench.json"
sed '/^--- bench.json ---$/,$d' "$raw" >"$out"
rm -f "$raw"
[[ -s "$results/bench.json" ]] || { echo "[bench] error: no results" >&2; exit 1; }
CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" cargo run -q --release \
	--manifest-path "$top/userspace/Cargo.toml" -p muserload-bench -- \
	--plot "$results/bench.json" "$results/bench.svg"
echo "[bench] results: $out, $results/bench.json, $results/bench.svg" >&2
