#!/usr/bin/env bash
# `make shell`: an interactive shell in the guest, with the module loaded and the tests in
# /tests. Leave with `poweroff -f` (or Ctrl-A X).
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
flavour=${FLAVOUR:-debug}
prepare_guest "$flavour"
"$here/run-guest.sh" shell "$kdir" "$ko" "$payload" /dev/null
