#!/usr/bin/env bash
# Builds one flavour of the guest kernel from Debian's linux-source-7.3 and prints the
# build directory (usable as KDIR for out-of-tree modules) on stdout.
#
#   vm/build-kernel.sh FLAVOUR        build if needed, print the directory
#   vm/build-kernel.sh --dir FLAVOUR  print the directory only, build nothing
#   vm/build-kernel.sh --unpack       unpack the source if needed (kselftest_harness.h,
#                                     checkpatch.pl), build nothing
#
# FLAVOUR is one of debug (make test), leakcheck (kmemleak scan), plain (benchmarks): the
# config is `make tinyconfig` + vm/kconfig/guest.config + vm/kconfig/FLAVOUR.config.
# The directory name carries the source package version and a hash of the fragments and the
# toolchain, so an unchanged kernel is never rebuilt and a changed one never reuses stale
# objects. ccache makes a rebuild after a config change cheap.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vm/env.sh
. "$here/env.sh"

log() { printf '[kernel] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

print_only=0 unpack_only=0
case "${1:-}" in
--dir) print_only=1 && shift ;;
--unpack) unpack_only=1 ;;
esac
deb=$(compgen -G "$MUSERLOAD_CACHE/downloads/linux-source-${KERNEL_SERIES}_*.deb" | sort -V | tail -n 1) ||
	die "no linux-source-$KERNEL_SERIES package; run vm/install-prereqs.sh"
deb_version=$(dpkg-deb -f "$deb" Version)
src="$MUSERLOAD_CACHE/src/linux-source-$deb_version"

unpack() {
	[[ -e "$src/.muserload-unpacked" ]] && return
	log "unpacking $(basename "$deb")"
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	dpkg-deb -x "$deb" "$src.tmp/deb"
	tarball=$(compgen -G "$src.tmp/deb/usr/src/linux-source-$KERNEL_SERIES.tar.*" | head -n 1) ||
		die "no source tarball in $deb"
	tar -C "$src.tmp" -xf "$tarball"
	mv "$src.tmp/linux-source-$KERNEL_SERIES" "$src"
	rm -rf "$src.tmp"
	touch "$src/.muserload-unpacked"
}
if ((unpack_only)); then
	unpack
	exit 0
fi

flavour=${1:?usage: build-kernel.sh [--dir] debug|leakcheck|plain, or --unpack}
fragments=("$here/kconfig/guest.config" "$here/kconfig/$flavour.config")
[[ -f "${fragments[1]}" ]] || die "unknown flavour '$flavour' (no ${fragments[1]})"

key=$( {
	cat "${fragments[@]}"
	rustc --version
	"clang$LLVM_SUFFIX" --version | head -n 1
	bindgen --version
} | sha256sum | cut -c1-12)
out="$MUSERLOAD_CACHE/kernel/$deb_version-$flavour-$key"

if ((print_only)); then
	echo "$out"
	exit 0
fi

if [[ -e "$out/.muserload-built" ]]; then
	echo "$out"
	exit 0
fi

unpack

make_k=(make -C "$src" O="$out" LLVM="$LLVM_SUFFIX" CC="ccache clang$LLVM_SUFFIX" -j"$(($(nproc) + 1))")

log "configuring $flavour in $out"
mkdir -p "$out"
"${make_k[@]}" -s tinyconfig
"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "${fragments[@]}" >/dev/null
"${make_k[@]}" -s olddefconfig

# merge_config only warns when Kconfig drops a value (an unmet dependency): refuse instead,
# so a fragment never silently stops meaning what it says.
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=n) ! grep -q "^${line%=n}=" "$out/.config" ;;
	CONFIG_*) grep -qxF "$line" "$out/.config" ;;
	*) continue ;;
	esac || die "$flavour: '$line' did not survive olddefconfig"
done < <(cat "${fragments[@]}")

log "building $flavour (ccache: $CCACHE_DIR)"
start=$SECONDS
"${make_k[@]}" -s
log "built $flavour in $((SECONDS - start)) s"
touch "$out/.muserload-built"
# Builds of this flavour for older configs are never used again.
for old in "$MUSERLOAD_CACHE/kernel/"*-"$flavour"-*; do
	[[ "$old" == "$out" ]] || rm -rf "$old"
done
echo "$out"
