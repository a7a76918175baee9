#!/usr/bin/env bash
# `make bench-migrate`: downtime and total time of the loader's migrations of its test guest
# (64, 256 and 1024 MiB; idle and write-heavy; post-copy, pre-copy and hybrid), and of a
# Linux guest that leaves most of its RAM untouched (256, 512 and 1024 MiB; post-copy and
# pre-copy: pre-copy's pause against its downtime target), in one boot of the plain
# (non-debug) kernel. Prints the tables; writes them, the JSON and an SVG plot to
# $MUSERLOAD_CACHE/results/migrations.{txt,json,svg}, and the guest's whole output (with
# the errors of any failed migration) to migrations.log. SIZES="64 256" picks the test
# guest's sizes, SPARSE_SIZES="256" the Linux guest's, RUNS=1 how many times each of its
# migrations runs (3).
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest plain
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
raw="$results/migrations.log"
echo "[bench-migrate] booting the plain guest (console: $results/console-bench-migrate.log)" >&2
# Each of the Linux guest's migrations boots a nested Linux: more time than run-guest.sh's
# default.
GUEST_MEM=${GUEST_MEM:-6G} GUEST_TIMEOUT=${GUEST_TIMEOUT:-2400} \
	GUEST_APPEND="mlsizes=\"${SIZES:-64 256 1024}\" mlsparse=\"${SPARSE_SIZES:-256 512 1024}\" mlruns=${RUNS:-3}" \
	"$here/run-guest.sh" bench-migrate "$kdir" "$ko" "$payload" \
	"$results/console-bench-migrate.log" | tee "$raw" | grep '^#' >&2 || true
sed -n '/^--- migrations.json ---$/,/^--- end ---$/p' "$raw" | sed '1d;$d' >"$results/migrations.json"
[[ -s "$results/migrations.json" ]] || { echo "[bench-migrate] error: no results" >&2; exit 1; }
"$here/splats.sh" "$results/console-bench-migrate.log"
CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" cargo run -q --release \
	--manifest-path "$top/userspace/Cargo.toml" -p muserload-bench -- \
	--migrations "$results/migrations.json" "$results/migrations.svg" | tee "$results/migrations.txt"
echo "[bench-migrate] results: $results/migrations.{txt,json,svg}" >&2
