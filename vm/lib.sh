# Build steps shared by vm/test.sh and vm/demo.sh; sourced, never run.
# Each function prints progress on stderr and its result (a path) on stdout.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
# shellcheck source=vm/env.sh
. "$here/env.sh"

# The unpacked kernel source (for kselftest_harness.h, checkpatch.pl, .rustfmt.toml).
kernel_source() {
	compgen -G "$MUSERLOAD_CACHE/src/linux-source-$KERNEL_SERIES*" | sort -V | tail -n 1
}

# Builds the selftests and the userspace crates' test binaries (static, musl) and lays them
# out as the guest expects: PAYLOAD/tests/{kselftest,libtest}/ and PAYLOAD/bin/. BZIMAGE, if
# given, becomes the kernel of the loader's nested Linux test guest.
build_payload() {
	local bzimage=${1:-}
	local payload="$MUSERLOAD_CACHE/payload" target="$MUSERLOAD_CACHE/target"
	rm -rf "$payload"
	mkdir -p "$payload/tests/kselftest" "$payload/tests/libtest" "$payload/bin"
	make -s -C "$top/selftests" KSRC="$(kernel_source)" OUTPUT="$payload/tests/kselftest" >&2 ||
		return 1
	local musl=(--manifest-path "$top/userspace/Cargo.toml" --target x86_64-unknown-linux-musl)
	CARGO_TARGET_DIR=$target cargo build -q --release "${musl[@]}" --bins --examples >&2 ||
		return 1
	cp "$target/x86_64-unknown-linux-musl/release/examples/handshake" \
		"$target/x86_64-unknown-linux-musl/release/muserload-bench" \
		"$target/x86_64-unknown-linux-musl/release/muserload-fuzz" \
		"$target/x86_64-unknown-linux-musl/release/muserload-loader" "$payload/bin/"
	# The suite's short fuzz: without arguments the fuzzer runs 60 s and prints KTAP.
	cp "$target/x86_64-unknown-linux-musl/release/muserload-fuzz" "$payload/tests/kselftest/fuzz"
	# The loader's test guest: freestanding, its own workspace and target (.cargo/config.toml).
	(cd "$top/userspace/test-guest" && CARGO_TARGET_DIR=$target cargo build -q --release) >&2 ||
		return 1
	cp "$target/x86_64-unknown-none/release/muserload-test-guest" "$payload/bin/"
	# The loader's Linux test guest: an initramfs whose /init is the memory workload.
	local initrd
	initrd=$(mktemp -d)
	cp "$target/x86_64-unknown-linux-musl/release/muserload-guest-workload" "$initrd/init"
	pack_initramfs "$initrd" "$payload/bin/linux-guest.cpio.gz"
	rm -rf "$initrd"
	[[ -z "$bzimage" ]] || cp "$bzimage" "$payload/bin/linux-guest-bzImage"
	build_stock_guest "$payload" "$target/x86_64-unknown-linux-musl/release/muserload-guest-init" ||
		return 1
	# Integration tests need /dev/muserload, so they run in the guest only.
	CARGO_TARGET_DIR=$target cargo test -q --release "${musl[@]}" --tests --no-run \
		--message-format=json 2>/dev/null |
		python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    # Integration tests, and the unit tests of binaries (the benchmark baselines).
    if (m.get("reason") == "compiler-artifact" and m["executable"]
            and m["target"]["kind"] in (["test"], ["bin"]) and m["profile"]["test"]):
        print(m["target"]["name"], m["executable"])' |
		while read -r name exe; do cp "$exe" "$payload/tests/libtest/$name"; done
	[[ -n "$(ls "$payload/tests/libtest")" ]] || return 1
	echo "$payload"
}

# build_stock_guest PAYLOAD INIT: the loader's stock guest, from the packages
# vm/install-prereqs.sh downloaded: Debian's kernel as PAYLOAD/bin/stock-bzImage, and
# PAYLOAD/bin/stock-guest.cpio.gz, whose /init is INIT (muserload-guest-init) and which
# holds Debian's stress-ng and the libraries the dynamic loader finds for it.
build_stock_guest() {
	local payload=$1 init=$2 debs="$MUSERLOAD_CACHE/downloads/stock" work deb lib
	work=$(mktemp -d)
	local unpacked="$work/debs" initrd="$work/initrd"
	for deb in "$debs"/*.deb; do
		dpkg-deb -x "$deb" "$unpacked" || return 1
	done
	cp "$unpacked"/boot/vmlinuz-* "$payload/bin/stock-bzImage" || return 1
	mkdir -p "$initrd/usr/bin"
	cp "$init" "$initrd/init"
	cp "$unpacked/usr/bin/stress-ng" "$initrd/usr/bin/"
	"$unpacked/lib64/ld-linux-x86-64.so.2" \
		--library-path "$unpacked/lib/x86_64-linux-gnu:$unpacked/usr/lib/x86_64-linux-gnu" \
		--list "$unpacked/usr/bin/stress-ng" >"$work/libs" || return 1
	while read -r lib; do
		mkdir -p "$(dirname "$initrd${lib#"$unpacked"}")"
		cp -L "$lib" "$initrd${lib#"$unpacked"}"
	done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' "$work/libs")
	pack_initramfs "$initrd" "$payload/bin/stock-guest.cpio.gz"
	rm -rf "$work"
}

# pack_initramfs ROOT OUT: a nested guest's initramfs of ROOT, with the /dev/console its
# kernel opens for init before anything is mounted, gzipped into OUT.
pack_initramfs() {
	mkdir -p "$1/dev"
	mknod "$1/dev/console" c 5 1
	(cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"
}

# Installs what is missing and builds everything one guest of FLAVOUR needs; sets kdir,
# ko and payload for vm/run-guest.sh.
prepare_guest() {
	"$here/install-prereqs.sh"
	kdir=$("$here/build-kernel.sh" "$1")
	ko=$("$here/build-module.sh" "$kdir")
	payload=$(build_payload "$kdir/arch/x86/boot/bzImage")
}
