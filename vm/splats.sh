#!/usr/bin/env bash
# Prints every kernel splat in a serial console log, with its first lines; exits 1 if there
# is one. A splat is anything the kernel's checkers print: BUG, WARNING, Oops, KASAN, lockdep,
# RCU, hung tasks, panics, and kmemleak's reports.
set -uo pipefail
log=${1:?usage: splats.sh CONSOLE_LOG}
pattern='BUG:|WARNING:|Oops|KASAN|UBSAN|general protection fault|Kernel panic|'
pattern+='possible circular locking|possible recursive locking|inconsistent lock state|'
pattern+='suspicious RCU usage|INFO: task .* blocked|soft lockup|hard LOCKUP|'
pattern+='unreferenced object|suspected memory leak|rust_panic|panicked at|cut here'
if grep -nE "$pattern" "$log" >/dev/null; then
	grep -nE -A12 "$pattern" "$log" | head -n 120
	exit 1
fi
exit 0
