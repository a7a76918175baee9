# KTAP results of the host-side test drivers (vm/test.sh, vm/test-2vm.sh); sourced, never run.
# `result STATUS NAME` prints one numbered result and counts it; `finish` prints the totals
# ("N passed, N failed" last) and exits non-zero if anything failed.

pass=0 fail=0 skip=0 n=0
result() { # result STATUS NAME
	n=$((n + 1))
	if [[ "$1" == 0 ]]; then
		pass=$((pass + 1))
		echo "ok $n $2"
	else
		fail=$((fail + 1))
		echo "not ok $n $2"
	fi
}
finish() {
	echo "# Totals: pass:$pass fail:$fail skip:$skip"
	if ((skip)); then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
	((fail == 0))
	exit
}
