#!/usr/bin/env bash
# `make bench-migrate`: downtime and total time of the loader's migrations of its test guest
# (64, 256 and 1024 MiB; idle and write-heavy; post-copy, pre-copy and hybrid) in one boot
# of the plain (non-debug) kernel. Prints the table; writes it, the JSON and an SVG plot to
# $MUSERLOAD_CACHE/results/migrations.{txt,json,svg}, and the guest's whole output (with
# the errors of any failed migration) to migrations.log. SIZES="64 256" picks the sizes.
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest plain
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"
raw="$results/migrations.log"
echo "[bench-migrate] booting the plain guest (console: $results/console-bench-migrate.log)" >&2
GUEST_MEM=${GUEST_MEM:-6G} GUEST_APPEND="mlsizes=\"${SIZES:-64 256 1024}\"" \
	"$here/run-guest.sh" bench-migrate "$kdir" "$ko" "$payload" \
	"$results/console-bench-migrate.log" | tee "$raw" | grep '^#' >&2 || true
sed -n '/^--- migrations.json ---$/,/^--- end ---$/p' "$raw" | sed '1d;$d' >"$results/migrations.json"
[[ -s "$results/migrations.json" ]] || { echo "[bench-migrate] error: no results" >&2; exit 1; }
"$here/splats.sh" "$results/console-bench-migrate.log"
CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" cargo run -q --release \
	--manifest-path "$top/userspace/Cargo.toml" -p muserload-bench -- \
	--migrations "$results/migrations.json" "$results/migrations.svg" | tee "$results/migrations.txt"
echo "[bench-migrate] results: $results/migrations.{txt,json,svg}" >&2
