# SPDX-License-Identifier: GPL-2.0
#
# The project's entry points. Kbuild itself reads ./Kbuild; this file is for people.
#
#   make            build muserload.ko (against the project's debug kernel, built if needed,
#                   or against KDIR=<a built Rust-enabled kernel tree>)
#   make test       build everything and run every test in the guests (README)
#   make test-2vm   migrate between two VMs joined by a network (too slow for make test)
#   make fuzz       a long fuzz of the module in the guest (DURATION=, SEED=, OPS=, FLAVOUR=)
#   make demo       boot the guest and run the demo
#   make bench      muserload against userfaultfd in the plain (non-debug) guest
#   make bench-profile  where each bench case's time goes, sampled with perf (ONLY=group)
#   make bench-migrate  the loader's migrations: downtime and total time by size and kind
#   make bench-vcpus    demand paging of a nested VM whose vCPUs fault at once (COUNTS=)
#   make shell      a shell in the guest (FLAVOUR=debug|leakcheck|plain)
#   make kernel     build the FLAVOUR kernel (default debug)
#   make prereqs    install what the build needs (Debian 12, root)
#   make clean      remove the cached build outputs of the module and userspace

FLAVOUR ?= debug

.PHONY: all module test test-2vm fuzz demo bench bench-profile bench-migrate bench-vcpus shell \
	kernel prereqs clean

all: module

module:
ifdef KDIR
	@vm/build-module.sh $(KDIR)
else
	@vm/install-prereqs.sh
	@vm/build-module.sh "$$(vm/build-kernel.sh $(FLAVOUR))"
endif

test:
	@vm/test.sh

test-2vm:
	@vm/test-2vm.sh

fuzz:
	@vm/fuzz.sh

demo:
	@vm/demo.sh

bench:
	@vm/bench.sh

bench-profile:
	@vm/bench.sh --profile $(ONLY)

bench-migrate:
	@vm/bench-migrate.sh

bench-vcpus:
	@vm/bench-vcpus.sh

shell:
	@FLAVOUR=$(FLAVOUR) vm/shell.sh

kernel: prereqs
	@vm/build-kernel.sh $(FLAVOUR)

prereqs:
	@vm/install-prereqs.sh

clean:
	@. vm/env.sh && rm -rf "$$MUSERLOAD_CACHE/module" "$$MUSERLOAD_CACHE/target" \
		"$$MUSERLOAD_CACHE/payload" "$$MUSERLOAD_CACHE/results"
