#!/usr/bin/env bash
# `make demo`: boots the guest, loads the module and runs the demo in it (for now the
# handshake; later the post-copy migration). The guest's demo output goes to stdout.
set -euo pipefail

. "$(cd "$(dirname "$0")" && pwd)/lib.sh"
prepare_guest debug
log="$MUSERLOAD_CACHE/results/console-demo.log"
mkdir -p "$(dirname "$log")"
echo "[demo] booting the guest (console: $log)" >&2
"$here/run-guest.sh" demo "$kdir" "$ko" "$payload" "$log"
"$here/splats.sh" "$log"
