#!/usr/bin/env bash
# Installs everything `make test`, `make demo` and `make bench` need on a Debian 12 host.
# Idempotent: a second run on a prepared machine only checks and returns in a second or two.
#
# Suites: bookworm-backports (QEMU 10) at the default backports priority, so only packages
# asked for with -t come from it; trixie-backports pinned to 1, so nothing is ever installed
# or upgraded from it: it is used only to `apt-get download` the architecture-independent
# linux-source-7.3 package, which vm/build-kernel.sh unpacks.
#
# It also downloads, never installs, the loader's stock guest: Debian's own kernel
# (linux-image-amd64's) and stress-ng with the libraries it needs (vm/lib.sh packs them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vm/env.sh
. "$here/env.sh"

apt_packages=(
	build-essential flex bison bc libelf-dev libssl-dev cpio kmod ccache
	clang-19 lld-19 llvm-19 libclang-19-dev busybox-static python3 rsync
	xz-utils
)
backports_packages=(qemu-system-x86)

log() { printf '[prereqs] %s\n' "$*" >&2; }

missing_packages() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			printf '%s\n' "$p"
	done
}

setup_apt_sources() {
	local list=/etc/apt/sources.list.d/muserload.list
	local pref=/etc/apt/preferences.d/muserload-pin
	local want_list want_pref
	want_list=$'deb http://deb.debian.org/debian bookworm-backports main\ndeb http://deb.debian.org/debian trixie-backports main'
	want_pref=$'Package: *\nPin: release n=trixie-backports\nPin-Priority: 1\n\nPackage: *\nPin: release n=bookworm-backports\nPin-Priority: 100'
	if [[ "$(cat "$list" 2>/dev/null)" != "$want_list" || "$(cat "$pref" 2>/dev/null)" != "$want_pref" ]]; then
		log "adding bookworm-backports and trixie-backports (pinned to 1)"
		printf '%s\n' "$want_list" >"$list"
		printf '%s\n' "$want_pref" >"$pref"
		rm -f "$MUSERLOAD_CACHE/.apt-updated"
	fi
}

apt_update_once() {
	mkdir -p "$MUSERLOAD_CACHE"
	if [[ ! -e "$MUSERLOAD_CACHE/.apt-updated" ]]; then
		log "apt-get update"
		apt-get update -qq
		touch "$MUSERLOAD_CACHE/.apt-updated"
	fi
}

install_packages() {
	local missing
	mapfile -t missing < <(missing_packages "${apt_packages[@]}")
	if ((${#missing[@]})); then
		apt_update_once
		log "installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	if ! dpkg-query -W -f='${Status} ${Version}\n' qemu-system-x86 2>/dev/null |
		grep -q '^install ok installed .*bpo12'; then
		apt_update_once
		log "installing ${backports_packages[*]} from bookworm-backports"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			-t bookworm-backports "${backports_packages[@]}" >/dev/null
	fi
}

install_rust_tools() {
	local have
	rustup component list --installed | grep -q '^rust-src' || {
		log "rustup component add rust-src"
		rustup component add rust-src
	}
	for t in x86_64-unknown-linux-musl x86_64-unknown-none; do
		rustup target list --installed | grep -qx "$t" || {
			log "rustup target add $t"
			rustup target add "$t"
		}
	done
	have=$(bindgen --version 2>/dev/null || true)
	if [[ "$have" != "bindgen $BINDGEN_VERSION" ]]; then
		log "cargo install bindgen-cli $BINDGEN_VERSION"
		cargo install --locked bindgen-cli --version "$BINDGEN_VERSION"
	fi
}

fetch_linux_source() {
	local deb_dir="$MUSERLOAD_CACHE/downloads"
	mkdir -p "$deb_dir"
	if ! compgen -G "$deb_dir/linux-source-${KERNEL_SERIES}_*.deb" >/dev/null; then
		apt_update_once
		log "downloading linux-source-$KERNEL_SERIES from trixie-backports"
		(cd "$deb_dir" && apt-get download -qq "linux-source-$KERNEL_SERIES")
	fi
}

# The stock guest's packages, in $MUSERLOAD_CACHE/downloads/stock: the versions apt offers
# the first time, kept from then on.
fetch_stock_guest() {
	local deb_dir="$MUSERLOAD_CACHE/downloads/stock" kernel packages
	[[ -e "$deb_dir/.complete" ]] && return
	apt_update_once
	kernel=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" { print $2; exit }')
	mapfile -t packages < <(apt-cache depends --recurse --no-recommends --no-suggests \
		--no-conflicts --no-breaks --no-replaces --no-enhances stress-ng | grep '^[a-z0-9]' |
		sort -u)
	log "downloading $kernel and stress-ng (${#packages[@]} packages) for the stock guest"
	rm -rf "$deb_dir"
	mkdir -p "$deb_dir"
	# As root, into a directory apt's own user cannot write to.
	(cd "$deb_dir" && apt-get download -qq -o APT::Sandbox::User=root "$kernel" "${packages[@]}")
	touch "$deb_dir/.complete"
}

setup_apt_sources
install_packages
install_rust_tools
fetch_linux_source
fetch_stock_guest
log "all prerequisites present"
