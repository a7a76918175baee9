#!/usr/bin/env bash
# Builds the module out of tree against KDIR and prints the path of muserload.ko.
#
#   vm/build-module.sh KDIR [make arguments...]
#
# The sources are copied into a build directory of their own under the cache, one per KDIR,
# so that modules for several kernels (debug, leakcheck, plain, a user's tree) coexist and the
# repository stays free of build outputs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
# shellcheck source=vm/env.sh
. "$here/env.sh"

kdir=$(realpath "${1:?usage: build-module.sh KDIR [make arguments...]}")
shift
[[ -e "$kdir/rust/libkernel.rmeta" ]] ||
	{ echo "[module] error: $kdir is not a built Rust-enabled kernel tree (no rust/libkernel.rmeta)" >&2; exit 1; }

out="$MUSERLOAD_CACHE/module/$(printf '%s' "$kdir" | sha256sum | cut -c1-12)"
mkdir -p "$out"
# Build outputs are excluded, so --delete keeps them and removes only vanished sources.
rsync -a --delete --exclude='*.o' --exclude='*.ko' --exclude='.*.cmd' --exclude='*.mod*' \
	--exclude='*.order' --exclude='*.symvers' --exclude='*.d' --exclude='uapi_generated.rs' \
	"$top/Kbuild" "$top/rust-module" "$top/include" "$out/"
# make compares times, and rsync -a keeps the sources' own: a source that changed but is
# older than the last build (edited before another checkout's build, or from an older
# commit) would not be rebuilt. The hash of the sources of the last build decides instead.
sources=$(cd "$out" && find Kbuild rust-module include -type f \( -name Kbuild -o -name '*.rs' \
	-o -name '*.c' -o -name '*.h' \) ! -name uapi_generated.rs | sort | xargs sha256sum | sha256sum)
if [[ "$(cat "$out/.sources" 2>/dev/null)" != "$sources" ]]; then
	make -s -C "$kdir" M="$out" LLVM="$LLVM_SUFFIX" clean >&2
fi
# Warnings, clippy's included, fail the build.
make -s -C "$kdir" M="$out" LLVM="$LLVM_SUFFIX" CLIPPY=1 KRUSTFLAGS=-Dwarnings "$@" modules >&2
echo "$sources" >"$out/.sources"
echo "$out/muserload.ko"
