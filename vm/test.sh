#!/usr/bin/env bash
# `make test`: installs what is missing, builds the kernels, the module, the selftests and
# the userspace crates, runs the host checks, then the whole suite in the debug guest
# (KASAN, lockdep, DEBUG_VM) and again in the leak-check guest (kmemleak, scanned after the
# suite). Prints KTAP-style results and, last, "N passed, N failed". Exits non-zero on any
# failure, timeout or kernel splat.
#
# Environment: FLAVOURS (default "debug leakcheck"), WEDGE_TEST (see run_suite), and those
# of vm/run-guest.sh.
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

# The wedge evidence: stack-trace lines from where program K started in LOG, and how many
# of them are muserload's (its module's frames, or Rust symbols of its crate).
stack_lines() { # stack_lines LOG K
	sed -n "/muserload-test: program $2 /,\$p" "$1" | grep -E '\+0x[0-9a-f]+/0x[0-9a-f]+'
}

# Runs the suite in the FLAVOUR guest, in as many boots as it takes: a boot that ends in the
# middle of a program (its kernel panicked, wedged or went silent) is followed by a fresh one
# from the next program. That program runs once more first when the evidence clears
# muserload: no muserload frame among the stacks printed after it started (QEMU's emulated
# SVM has wedged this kernel on its own). It fails if it ends its boot again, and whenever a
# muserload frame is there. Sets p, f, s.
run_suite() {
	local flavour=$1
	local ktap="$results/ktap-$flavour.txt" first=1 boot=1 retried=0
	local log status k name lines ours wedge resume append=""
	# Under KASAN the nested Linux guest now and then triple-faults (at boot on the source,
	# or after the switch; never seen in the other guests): its tests run in the leak-check
	# guest only. The debug guest takes about 12 minutes (KASAN, 1000 module loads, the
	# fuzz): room for a loaded host. Its output goes on a line at a time (sed -u), as it comes.
	[[ $flavour == debug ]] && append="mlskip=linux_guest"
	: >"$ktap"
	rm -f "$results/console-$flavour"-*.log
	while :; do
		log="$results/console-$flavour.log"
		((boot > 1)) && log="$results/console-$flavour-$boot.log"
		echo "# guest: $flavour kernel, boot $boot (console: $log)"
		# WEDGE_TEST=PROGRAM:crash|silence ends the first boot in PROGRAM as a wedged
		# kernel would (a panic without muserload frames, or a console gone silent), to
		# test this loop: PROGRAM must run again in boot 2 and the suite pass.
		wedge="" resume=""
		((boot == 1)) && [[ -n "${WEDGE_TEST:-}" ]] && wedge="mlwedge=$WEDGE_TEST"
		((boot > 1)) && resume="mlfirst=$first"
		GUEST_TIMEOUT=${GUEST_TIMEOUT:-2700} GUEST_APPEND="$append $resume $wedge" \
			"$here/run-guest.sh" test "${kdir[$flavour]}" "${ko[$flavour]}" "$payload" "$log" |
			tee -a "$ktap" | sed -u 's/^/  /'
		status=${PIPESTATUS[0]}
		[[ $status == 124 ]] && echo "# $flavour guest: timed out or went silent"
		# The suite ran to its end: only this boot's log can hold a splat of its own.
		if tail -n 1 "$ktap" | grep -qx '# suite done'; then
			result "$status" "$flavour guest ran the suite to its end (boot $boot)"
			step "$flavour guest: no kernel splat (boot $boot)" "$here/splats.sh" "$log"
			break
		fi
		k=$(grep -o 'muserload-test: program [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
		if [[ -z "$k" ]] || grep -q 'muserload-test: programs done' "$log"; then
			result 1 "$flavour guest: boot $boot ended outside any test program"
			step "$flavour guest: no kernel splat (boot $boot)" "$here/splats.sh" "$log"
			break
		fi
		name=$(grep -o "muserload-test: program $k .*" "$log" | tail -n 1 | tr -d '\r' |
			cut -d' ' -f4)
		lines=$(stack_lines "$log" "$k" | wc -l)
		ours=$(stack_lines "$log" "$k" | grep -c muserload)
		echo "# $flavour guest: boot $boot ended in program $k ($name): $lines stack lines" \
			"printed after it started, $ours of them muserload's"
		stack_lines "$log" "$k" | head -n 60 | sed 's/^/#   /'
		# What came before the program is this boot's to answer for.
		sed "/muserload-test: program $k /q" "$log" >"$log.before"
		step "$flavour guest: no kernel splat (boot $boot, before $name)" \
			"$here/splats.sh" "$log.before"
		if ((ours == 0 && lines > 0 && retried != k)); then
			echo "# $flavour guest: no muserload frame: the kernel wedged on its own" \
				"(QEMU TCG's nested SVM); $name runs once more in a fresh boot"
			retried=$k first=$k
		else
			# Program k is step k + 1 (step 1 is insmod).
			echo "not ok $((k + 1)) selftests: muserload: $name # ended its boot" >>"$ktap"
			echo "#   not ok: $name ended boot $boot" \
				"$( ((ours)) && echo "with muserload frames in the stacks" ||
					echo "again (or without any stack to clear it)")"
			first=$((k + 1))
		fi
		boot=$((boot + 1))
	done
	read -r p f s < <(awk -f "$here/ktap-totals.awk" "$ktap")
}

for flavour in ${FLAVOURS:-debug leakcheck}; do
	run_suite "$flavour"
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
	echo "# $flavour guest: $p passed, $f failed, $s skipped"
done
finish
