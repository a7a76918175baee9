#!/usr/bin/env bash
# `make shell`: an interactive shell in the guest, with the module loaded and the tests in
# /tests. Leave with `poweroff -f` (or Ctrl-A X).
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
"$here/install-prereqs.sh"
flavour=${FLAVOUR:-debug}
kdir=$("$here/build-kernel.sh" "$flavour")
ko=$("$here/build-module.sh" "$kdir")
payload=$(build_payload)
"$here/run-guest.sh" shell "$kdir" "$ko" "$payload" /dev/null
