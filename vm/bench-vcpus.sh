#!/usr/bin/env bash
# `make bench-vcpus`: demand paging of a nested KVM VM whose vCPUs all fault at once (KVM's
# demand_paging_test, on each of the benchmark's backends: first touch, userfaultfd with one
# reader and a reader per vCPU, muserload's queue with one resolver and a resolver per vCPU,
# muserload's signal mode, its signal taken by a handler or in the vCPU loop, there with the page
# mapped into the VM before re-entry; copies, and moves from staging), in one boot of the plain
# (non-debug) kernel booted with 8 vCPUs. Prints the table; writes it, the JSON and an SVG
# plot to $MUSERLOAD_CACHE/results/bench-vcpus.{txt,json,svg}. COUNTS="1,2,4" picks the
# vCPU counts (1,2,4,8; up to 16), SLICE_MIB each vCPU's memory (16), RUNS the repetitions (3),
# DEADLINE_S how long a case's vCPUs may take before those not done end the run as stuck
# (600).
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest plain
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
raw="$results/bench-vcpus.log"
console="$results/console-bench-vcpus.log"
echo "[bench-vcpus] booting the plain guest with ${GUEST_CPUS:-8} vCPUs (console: $console)" >&2
append="mlcounts=${COUNTS:-1,2,4,8} mlslice=${SLICE_MIB:-16} mlruns=${RUNS:-3}"
append+=" mldeadline=${DEADLINE_S:-600}"
GUEST_CPUS=${GUEST_CPUS:-8} GUEST_TIMEOUT=${GUEST_TIMEOUT:-5400} GUEST_APPEND="$append" \
	"$here/run-guest.sh" bench-vcpus "$kdir" "$ko" "$payload" "$console" | tee "$raw"
"$here/splats.sh" "$console"
sed -n '/^--- bench-vcpus.json ---$/,/^--- end ---$/p' "$raw" | sed '1d;$d' \
	>"$results/bench-vcpus.json"
grep -q "\[" "$results/bench-vcpus.json" || { echo "[bench-vcpus] error: no results" >&2; exit 1; }
CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" cargo run -q --release \
	--manifest-path "$top/userspace/Cargo.toml" -p muserload-bench -- \
	--plot-vcpus "$results/bench-vcpus.json" "$results/bench-vcpus.svg" |
	tee "$results/bench-vcpus.txt"
echo "[bench-vcpus] results: $results/bench-vcpus.{txt,json,svg}" >&2
