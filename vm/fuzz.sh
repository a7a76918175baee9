#!/usr/bin/env bash
# `make fuzz`: the long fuzz, in the debug guest (KASAN, lockdep, DEBUG_VM) by default.
# Prints the guest's KTAP (the fuzzer's seed first, its operations and ops/s last), then
# checks the kernel console for splats; exits non-zero on a failed check, a timeout or a
# splat.
#
# Environment: DURATION in seconds (default 600), OPS (stop after that many operations,
# if sooner), SEED (default: a new one, printed),
# FLAVOUR (debug; leakcheck runs it under kmemleak, with a scan at the end), and those of
# vm/run-guest.sh.
set -uo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
flavour=${FLAVOUR:-debug}
duration=${DURATION:-600}
[[ "$duration" =~ ^[0-9]+$ ]] || { echo "DURATION must be a number of seconds" >&2; exit 2; }

"$here/install-prereqs.sh" >&2 || exit 1
kdir=$("$here/build-kernel.sh" "$flavour") || exit 1
ko=$("$here/build-module.sh" "$kdir") || exit 1
# A payload of its own: the fuzzer alone (the suite's payload is build_payload's).
payload="$MUSERLOAD_CACHE/fuzz-payload" target="$MUSERLOAD_CACHE/target"
rm -rf "$payload"
mkdir -p "$payload/bin"
CARGO_TARGET_DIR=$target cargo build -q --release --manifest-path "$top/userspace/Cargo.toml" \
	--target x86_64-unknown-linux-musl -p muserload-fuzz >&2 || exit 1
cp "$target/x86_64-unknown-linux-musl/release/muserload-fuzz" "$payload/bin/"

log="$MUSERLOAD_CACHE/results/console-fuzz-$flavour.log"
mkdir -p "$(dirname "$log")"
echo "# fuzz: $duration s in the $flavour guest (console: $log)"
# The guest's own margin: boot, and the last round's check.
GUEST_TIMEOUT=$((duration + 600)) \
	GUEST_APPEND="fuzz_duration=$duration ${SEED:+fuzz_seed=$SEED} ${OPS:+fuzz_ops=$OPS}" \
	"$here/run-guest.sh" fuzz "$kdir" "$ko" "$payload" "$log" | tee "$MUSERLOAD_CACHE/results/ktap-fuzz.txt"
status=${PIPESTATUS[0]}
read -r pass fail _ < <(awk -f "$here/ktap-totals.awk" "$MUSERLOAD_CACHE/results/ktap-fuzz.txt")
((status == 124)) && echo "# the guest timed out"
if "$here/splats.sh" "$log"; then
	echo "# no kernel splat"
else
	echo "# kernel splat (above)"
	status=1
fi
echo "$pass passed, $fail failed"
((status == 0 && fail == 0))
