# Adds up a guest's KTAP (vm/guest/run-tests): every leaf test counts once.
# A top-level step that carries its own "# Totals:" (a test program) counts its leaves; a
# step without one (insmod, rmmod, kmemleak, or a program that died before its totals)
# counts as one test. Prints "PASS FAIL SKIP".
/^  # Totals: / {
	for (i = 3; i <= NF; i++) {
		split($i, kv, ":")
		if (kv[1] == "pass") p = kv[2]
		if (kv[1] == "fail") f = kv[2]
		if (kv[1] == "error") f += kv[2]
		if (kv[1] == "skip") s = kv[2]
	}
	have_totals = 1
	next
}
/^(not )?ok [0-9]+ / {
	if (have_totals) {
		pass += p; fail += f; skip += s
		# A program whose leaves all passed but which itself failed (a crash after its
		# totals, a timeout) still fails once.
		if ($1 == "not" && f == 0) fail++
	} else if ($1 == "not") {
		fail++
	} else {
		pass++
	}
	have_totals = 0; p = f = s = 0
	steps++
}
/^1\.\.[0-9]+$/ && !plan { plan = substr($0, 4) }
END {
	# Steps the guest never reached (a panic, a timeout) fail.
	if (plan > steps) fail += plan - steps
	if (!plan) fail++
	print pass + 0, fail + 0, skip + 0
}
