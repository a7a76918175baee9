#!/usr/bin/env bash
# `make test`: installs what is missing, builds the kernels, the module, the selftests and
# the userspace crates, runs the host checks, then the whole suite in the debug guest
# (KASAN, lockdep, DEBUG_VM) and again in the leak-check guest (kmemleak, scanned after the
# suite). Prints KTAP-style results and, last, "N passed, N failed". Exits non-zero on any
# failure, timeout or kernel splat.
#
# Environment: FLAVOURS (default "debug leakcheck"), and those of vm/run-guest.sh.
set -uo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
results="$MUSERLOAD_CACHE/results"
mkdir -p "$results"

# shellcheck source=vm/ktap.sh
. "$here/ktap.sh"
# step NAME COMMAND...: runs a host step, its output as KTAP diagnostics; a failed
# build step ends the run, since nothing after it could run.
step() {
	local name=$1
	shift
	echo "# $name" >&2
	"$@" > >(sed 's/^/# /') 2>&1
	local status=$?
	result $status "$name"
	return $status
}

echo "TAP version 13"
step "install prerequisites" "$here/install-prereqs.sh" || finish

declare -A kdir ko
for flavour in ${FLAVOURS:-debug leakcheck}; do
	step "build $flavour kernel" "$here/build-kernel.sh" "$flavour" || finish
	kdir[$flavour]=$("$here/build-kernel.sh" --dir "$flavour")
	step "build module for $flavour" "$here/build-module.sh" "${kdir[$flavour]}" || finish
	ko[$flavour]=$("$here/build-module.sh" "${kdir[$flavour]}" 2>/dev/null)
done

# The kernel builds unpack the source: only now is it there on a fresh machine.
src=$(kernel_source)
# The loader's nested Linux guest boots the last flavour's kernel (leakcheck: no KASAN).
nested=${kdir[leakcheck]:-${kdir[$flavour]}}/arch/x86/boot/bzImage
step "build selftests and userspace" build_payload "$nested" || finish
payload=$(build_payload "$nested" 2>/dev/null)

step "rustfmt: module" rustfmt --check --edition 2021 --config-path "$src/.rustfmt.toml" \
	"$top"/rust-module/*.rs
step "rustfmt: userspace" cargo fmt --manifest-path "$top/userspace/Cargo.toml" --all -- --check
step "clippy: userspace" env CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" \
	cargo clippy -q --manifest-path "$top/userspace/Cargo.toml" --all-targets -- -D warnings
# The examples in the documentation build (they touch /dev/muserload, so they do not run).
step "rustdoc examples: userspace" env CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" \
	cargo test -q --manifest-path "$top/userspace/Cargo.toml" --doc
checkpatch=("$src/scripts/checkpatch.pl" --no-tree --quiet --terse --show-types)
step "checkpatch: uapi header" "${checkpatch[@]}" -f "$top"/include/uapi/linux/muserload.h
# The selftests are userspace: volatile forces the memory accesses they test, and there is
# no __aligned() macro outside the kernel.
step "checkpatch: selftests" "${checkpatch[@]}" --ignore VOLATILE,PREFER_DEFINED_ATTRIBUTE_MACRO \
	-f "$top"/selftests/*.c "$top"/selftests/*.h

for flavour in ${FLAVOURS:-debug leakcheck}; do
	log="$results/console-$flavour.log" ktap="$results/ktap-$flavour.txt"
	echo "# guest: $flavour kernel (console: $log)"
	# Under KASAN the nested Linux guest now and then triple-faults (at boot on the source,
	# or after the switch; never seen in the other guests): its tests run in the leak-check
	# guest only. The debug guest takes about 12 minutes (KASAN, 1000 module loads, the
	# fuzz): room for a loaded host. Its output goes on a line at a time (sed -u), as it comes.
	append=""
	[[ $flavour == debug ]] && append="mlskip=linux_guest"
	GUEST_TIMEOUT=${GUEST_TIMEOUT:-2700} GUEST_APPEND="$append" \
		"$here/run-guest.sh" test "${kdir[$flavour]}" "${ko[$flavour]}" "$payload" "$log" |
		tee "$ktap" | sed -u 's/^/  /'
	status=${PIPESTATUS[0]}
	read -r p f s < <(awk -f "$here/ktap-totals.awk" "$ktap")
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
	echo "# $flavour guest: $p passed, $f failed, $s skipped"
	[[ $status == 124 ]] && echo "# $flavour guest: timed out"
	result "$status" "$flavour guest ran to power-off"
	step "$flavour guest: no kernel splat" "$here/splats.sh" "$log"
done
finish
