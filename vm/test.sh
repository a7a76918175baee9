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

# Background steps: work that needs none of the CPU-bound steps before it runs beside them
# (a fresh machine has 2 cores, and a kernel build leaves one idle for minutes: its Rust
# crates and its links are serial). A job writes each step's output and status to files;
# `report` prints them as steps once the job is done, in order.
jobs_dir=$(mktemp -d)
trap 'rm -rf "$jobs_dir"' EXIT
quietly() { # quietly NAME COMMAND...: a step of a background job; returns its status
	local name=$1 file status
	shift
	file="$jobs_dir/$(printf '%02d' "$(find "$jobs_dir" -name '*.log' | wc -l)")"
	echo "$name" >"$file.name"
	"$@" >"$file.log" 2>&1
	status=$?
	echo $status >"$file.status"
	return $status
}
report() { # report PID: waits for a background job, then prints its steps' results
	local file status=0
	wait "$1"
	for file in "$jobs_dir"/*.status; do
		[[ -e "$file" ]] || continue
		file=${file%.status}
		echo "# $(cat "$file.name")" >&2
		sed 's/^/# /' "$file.log"
		result "$(cat "$file.status")" "$(cat "$file.name")"
		(($(cat "$file.status"))) && status=1
		rm -f "$file".*
	done
	return $status
}

host_checks() {
	quietly "rustfmt: module" rustfmt --check --edition 2021 \
		--config-path "$src/.rustfmt.toml" "$top"/rust-module/*.rs
	quietly "rustfmt: userspace" \
		cargo fmt --manifest-path "$top/userspace/Cargo.toml" --all -- --check
	# For the target and profile the payload was built for: the dependencies are built once.
	local cargo=(env CARGO_TARGET_DIR="$MUSERLOAD_CACHE/target" cargo)
	local musl=(--manifest-path "$top/userspace/Cargo.toml" --target x86_64-unknown-linux-musl)
	quietly "clippy: userspace" "${cargo[@]}" clippy -q "${musl[@]}" --release --all-targets \
		-- -D warnings
	# The examples in the documentation build (they touch /dev/muserload, so they do not run).
	quietly "rustdoc examples: userspace" "${cargo[@]}" test -q "${musl[@]}" --release --doc
	local checkpatch=("$src/scripts/checkpatch.pl" --no-tree --quiet --terse --show-types)
	quietly "checkpatch: uapi header" "${checkpatch[@]}" -f "$top"/include/uapi/linux/muserload.h
	# The selftests are userspace: volatile forces the memory accesses they test, and there
	# is no __aligned() macro outside the kernel.
	quietly "checkpatch: selftests" "${checkpatch[@]}" \
		--ignore VOLATILE,PREFER_DEFINED_ATTRIBUTE_MACRO -f "$top"/selftests/*.c "$top"/selftests/*.h
}

# build_kernel FLAVOUR: its kernel and its module, as background or foreground steps.
build_kernel() {
	quietly "build $1 kernel" "$here/build-kernel.sh" "$1" &&
		quietly "build module for $1" "$here/build-module.sh" \
			"$("$here/build-kernel.sh" --dir "$1")"
}

echo "TAP version 13"
step "install prerequisites" "$here/install-prereqs.sh" || finish
step "unpack the kernel source" "$here/build-kernel.sh" --unpack || finish
src=$(kernel_source)
read -ra flavours <<<"${FLAVOURS:-debug leakcheck}"
payload="$MUSERLOAD_CACHE/payload"

# The userspace, the selftests and the host checks beside the first kernel's build.
{
	quietly "build selftests and userspace" build_payload && host_checks
} &
userspace=$!
step "build ${flavours[0]} kernel" "$here/build-kernel.sh" "${flavours[0]}" || finish
step "build module for ${flavours[0]}" "$here/build-module.sh" \
	"$("$here/build-kernel.sh" --dir "${flavours[0]}")" || finish
report $userspace || [[ -x "$payload/bin/muserload-loader" ]] || finish

# The other kernels build beside the first guest's suite, at the lowest priority: the
# guest's timing-sensitive tests (the loader's migrations of nested guests) come first.
others=("${flavours[@]:1}")
{
	renice -n 19 "$BASHPID" >/dev/null
	for flavour in "${others[@]}"; do
		build_kernel "$flavour"
	done
} &
kernels=$!

declare -A kdir ko
kernel_of() { # kernel_of FLAVOUR: sets kdir and ko of a built flavour
	kdir[$1]=$("$here/build-kernel.sh" --dir "$1")
	ko[$1]=$("$here/build-module.sh" "${kdir[$1]}" 2>/dev/null)
}

# Runs the suite in the FLAVOUR guest, in as many boots as it takes: a boot that ends in the
# middle of a program (its kernel panicked, wedged or went silent) is followed by a fresh one
# from the next program. That program runs again first when the evidence clears muserload
# (vm/wedge.sh: no muserload frame among the trusted stack frames printed after it started,
# or no stack but a vCPU stuck where QEMU's SVM goes wrong or an NMI no vCPU took), at most
# twice: QEMU's emulated SVM has wedged the test kernel on its own, in the stock guest's
# program in 2 of 4 runs, and in two programs of one run.
# It fails whenever the evidence does not clear muserload, and on a third boot it ends.
# Sets p, f, s.
run_suite() {
	local flavour=$1
	local ktap="$results/ktap-$flavour.txt" first=1 boot=1 retries=0
	local log status k name wedge resume append="" cleared
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
		echo "# $flavour guest: boot $boot ended in program $k ($name); the evidence:"
		"$here/wedge.sh" "$log" "$k" "${kdir[$flavour]}" | sed 's/^/#   /'
		cleared=${PIPESTATUS[0]}
		# What came before the program is this boot's to answer for.
		sed "/muserload-test: program $k /q" "$log" >"$log.before"
		step "$flavour guest: no kernel splat (boot $boot, before $name)" \
			"$here/splats.sh" "$log.before"
		((first != k)) && retries=0
		if ((cleared == 0 && retries < 2)); then
			retries=$((retries + 1))
			echo "# $flavour guest: the evidence clears muserload: the kernel wedged on its" \
				"own (QEMU TCG's nested SVM); $name runs again in a fresh boot ($retries of 2)"
			first=$k
		else
			# Program k is step k + 1 (step 1 is insmod).
			echo "not ok $((k + 1)) selftests: muserload: $name # ended its boot" >>"$ktap"
			echo "#   not ok: $name ended boot $boot" \
				"$( ((cleared)) && echo "and the evidence does not clear muserload" ||
					echo "for the third time")"
			first=$((k + 1))
		fi
		boot=$((boot + 1))
	done
	read -r p f s < <(awk -f "$here/ktap-totals.awk" "$ktap")
}

# suite_of FLAVOUR: runs the suite in the FLAVOUR guest and adds up its results. The
# loader's nested Linux guest boots the leak-check kernel (no KASAN: under KASAN it
# triple-faults now and then), which only the leak-check guest's suite migrates.
suite_of() {
	kernel_of "$1"
	[[ $1 == leakcheck ]] && cp "${kdir[leakcheck]}/arch/x86/boot/bzImage" \
		"$payload/bin/linux-guest-bzImage"
	run_suite "$1"
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
	echo "# $1 guest: $p passed, $f failed, $s skipped"
}

suite_of "${flavours[0]}"
report $kernels || finish
for flavour in "${others[@]}"; do
	suite_of "$flavour"
done
finish
