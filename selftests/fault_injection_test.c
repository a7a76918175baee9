// SPDX-License-Identifier: GPL-2.0
/*
 * Allocation failures, injected one at a time with /proc/thread-self/fail-nth
 * (failslab and fail_page_alloc): for every call that allocates, the 1st,
 * 2nd, 3rd, ... allocation fails in turn until the call runs through without
 * reaching the injected failure. Each failure must be ENOMEM and leave the
 * object as the ABI says (unchanged, or a load's pages before the failure
 * loaded); the same call then succeeds. kmemleak, scanned after the suite in
 * the leakcheck guest, shows that no failure path leaked.
 */
#include <stdio.h>
#include <stdlib.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define PAGES 8
/* No call of the module makes this many allocations. */
#define MAX_NTH 300

static int fail_nth = -1;

/*
 * GFP_KERNEL allocations are what the module makes, and its pages are order 0:
 * by default failslab and fail_page_alloc skip both.
 */
static int setup_injection(void)
{
	if (ml_write_file("/sys/kernel/debug/failslab/ignore-gfp-wait", "N") ||
	    ml_write_file("/sys/kernel/debug/fail_page_alloc/ignore-gfp-wait", "N") ||
	    ml_write_file("/sys/kernel/debug/fail_page_alloc/min-order", "0") ||
	    ml_write_file("/sys/kernel/debug/failslab/verbose", "0") ||
	    ml_write_file("/sys/kernel/debug/fail_page_alloc/verbose", "0"))
		return -1;
	fail_nth = open("/proc/thread-self/fail-nth", O_RDWR);
	return fail_nth < 0 ? -1 : 0;
}

/* An object of PAGES guest pages and PAGES staging pages, mapped and armed. */
static void open_armed(struct __test_metadata *_metadata, struct ml *ml)
{
	ASSERT_EQ(0, ml_open(ml, PAGES * PAGE, PAGES * PAGE));
	ASSERT_EQ(0, ml_arm(ml, ml->guest, PAGES * PAGE, 0));
}

FIXTURE(inject)
{
	char *src;
};

FIXTURE_SETUP(inject)
{
	int i;

	if (setup_injection())
		SKIP(return, "no fault injection (CONFIG_FAULT_INJECTION_DEBUG_FS)");
	/* Faulted in now: a copy from it must not allocate page tables. */
	self->src = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, self->src);
	for (i = 0; i < PAGES; i++)
		ml_fill(self->src + i * PAGE, 10 + i);
}

FIXTURE_TEARDOWN(inject)
{
	if (fail_nth >= 0)
		pwrite(fail_nth, "0", 1, 0);
}

TEST_F(inject, open)
{
	int nth, fd, err;

	for (nth = 1; nth < MAX_NTH; nth++) {
		ml_inject(fail_nth, nth);
		fd = open(MUSERLOAD_DEV, O_RDWR);
		err = errno;
		if (!ml_injected(fail_nth)) {
			ASSERT_LE(0, fd);
			close(fd);
			break;
		}
		EXPECT_TRUE(fd >= 0 || err == ENOMEM);
		if (fd >= 0)
			close(fd);
	}
	EXPECT_LT(nth, MAX_NTH);
}

/* A failed setup leaves the object not set up: setting it up again works. */
TEST_F(inject, setup_ioctl)
{
	struct muserload_api api = { .api = MUSERLOAD_API };
	struct muserload_setup setup = {
		.size = PAGES * PAGE,
		.staging_size = PAGES * PAGE,
	};
	struct ml ml;
	int nth, ret, err, done = 0;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		memset(&ml, 0, sizeof(ml));
		ml.size = ml.staging_size = PAGES * PAGE;
		ml.fd = open(MUSERLOAD_DEV, O_RDWR);
		ASSERT_LE(0, ml.fd);
		ASSERT_EQ(0, ioctl(ml.fd, MUSERLOAD_IOC_API, &api));
		ml_inject(fail_nth, nth);
		ret = ioctl(ml.fd, MUSERLOAD_IOC_SETUP, &setup);
		err = errno;
		done = !ml_injected(fail_nth);
		if (ret) {
			EXPECT_EQ(ENOMEM, err);
			EXPECT_EQ(-1, ioctl(ml.fd, MUSERLOAD_IOC_ARM, &(struct muserload_arm){ 0 }));
			EXPECT_EQ(EINVAL, errno);
			ASSERT_EQ(0, ioctl(ml.fd, MUSERLOAD_IOC_SETUP, &setup));
		}
		ml.guest = mmap(NULL, ml.size, PROT_READ | PROT_WRITE, MAP_SHARED, ml.fd, 0);
		ASSERT_NE(MAP_FAILED, ml.guest);
		ASSERT_EQ(0, ml_load(&ml, ml.guest, self->src, PAGE, MUSERLOAD_LOAD_COPY, NULL));
		EXPECT_TRUE(ml_check(ml.guest, 10));
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
}

TEST_F(inject, mmap)
{
	struct ml ml;
	char *p;
	int nth, err, done = 0;

	open_armed(_metadata, &ml);
	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		ml_inject(fail_nth, nth);
		p = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ml.fd, 0);
		err = errno;
		done = !ml_injected(fail_nth);
		if (p == MAP_FAILED) {
			EXPECT_EQ(ENOMEM, err);
			continue;
		}
		/* The new mapping is one of the object's: a load through it shows in the first. */
		ASSERT_EQ(0, ml_arm(&ml, p, PAGE, 0));
		ASSERT_EQ(0, ml_load(&ml, p, self->src, PAGE, MUSERLOAD_LOAD_COPY, NULL));
		EXPECT_TRUE(ml_check(ml.guest, 10));
		munmap(p, PAGES * PAGE);
	}
	EXPECT_TRUE(done);
	ml_close(&ml);
}

/*
 * A load that fails reports the pages it did: those hold their data, the rest
 * are still armed and load afterwards.
 */
static void check_partial_load(struct __test_metadata *_metadata, struct ml *ml,
			       __u64 loaded, int first_seed)
{
	struct muserload_stats st;
	__u64 i;

	ASSERT_EQ(0, loaded % PAGE);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(PAGES - loaded / PAGE, st.unloaded);
	for (i = 0; i < loaded / PAGE; i++)
		EXPECT_TRUE(ml_check(ml->guest + i * PAGE, first_seed + i));
}

TEST_F(inject, copy)
{
	int nth, ret, done = 0;
	__u64 loaded;
	struct ml ml;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_armed(_metadata, &ml);
		ml_inject(fail_nth, nth);
		ret = ml_load(&ml, ml.guest, self->src, PAGES * PAGE, MUSERLOAD_LOAD_COPY, &loaded);
		done = !ml_injected(fail_nth);
		if (ret) {
			EXPECT_EQ(-ENOMEM, ret);
			check_partial_load(_metadata, &ml, loaded, 10);
			ASSERT_EQ(0, ml_load(&ml, ml.guest + loaded, self->src + loaded,
					     PAGES * PAGE - loaded, MUSERLOAD_LOAD_COPY, NULL));
		}
		check_partial_load(_metadata, &ml, PAGES * PAGE, 10);
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
}

/*
 * MOVE: half the staging slots written, half never touched (those need new
 * pages); a failure leaves every slot not moved where it was.
 */
TEST_F(inject, move)
{
	int nth, ret, i, done = 0;
	__u64 loaded;
	struct ml ml;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_armed(_metadata, &ml);
		for (i = 0; i < PAGES; i += 2)
			ml_fill(ml.staging + i * PAGE, 10 + i);
		ml_inject(fail_nth, nth);
		ret = ml_load(&ml, ml.guest, ml.staging, PAGES * PAGE, MUSERLOAD_LOAD_MOVE, &loaded);
		done = !ml_injected(fail_nth);
		if (ret) {
			EXPECT_EQ(-ENOMEM, ret);
			EXPECT_EQ(0, loaded);
			for (i = 0; i < PAGES; i++)
				EXPECT_TRUE(i % 2 ? ml_is_zero(ml.staging + i * PAGE) :
					    ml_check(ml.staging + i * PAGE, 10 + i));
			ASSERT_EQ(0, ml_load(&ml, ml.guest, ml.staging, PAGES * PAGE,
					     MUSERLOAD_LOAD_MOVE, NULL));
		}
		for (i = 0; i < PAGES; i++) {
			EXPECT_TRUE(i % 2 ? ml_is_zero(ml.guest + i * PAGE) :
				    ml_check(ml.guest + i * PAGE, 10 + i));
			/* Refilled, or left to zero-fill: zeros either way. */
			EXPECT_TRUE(ml_is_zero(ml.staging + i * PAGE));
		}
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
}

TEST_F(inject, loadv)
{
	struct muserload_vec vec[PAGES];
	struct muserload_loadv lv = { 0 };
	int nth, ret, err, i, done = 0;
	struct ml ml;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_armed(_metadata, &ml);
		for (i = 0; i < PAGES; i++) {
			vec[i].dst = (uintptr_t)ml.guest + i * PAGE;
			vec[i].src = (uintptr_t)self->src + i * PAGE;
			vec[i].len = PAGE;
		}
		lv.vec = (uintptr_t)vec;
		lv.count = PAGES;
		lv.mode = MUSERLOAD_LOAD_COPY;
		lv.loaded = 0;
		ml_inject(fail_nth, nth);
		ret = ioctl(ml.fd, MUSERLOAD_IOC_LOADV, &lv);
		err = errno;
		done = !ml_injected(fail_nth);
		if (ret) {
			EXPECT_EQ(ENOMEM, err);
			check_partial_load(_metadata, &ml, lv.loaded, 10);
			ASSERT_EQ(0, ml_load(&ml, ml.guest + lv.loaded, self->src + lv.loaded,
					     PAGES * PAGE - lv.loaded, MUSERLOAD_LOAD_COPY, NULL));
		}
		check_partial_load(_metadata, &ml, PAGES * PAGE, 10);
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
}

/* A failed arm changes nothing: the pages keep their data. */
TEST_F(inject, arm)
{
	int nth, ret, done = 0;
	struct ml ml;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_armed(_metadata, &ml);
		ASSERT_EQ(0, ml_load(&ml, ml.guest, self->src, PAGES * PAGE,
				     MUSERLOAD_LOAD_COPY, NULL));
		ml_inject(fail_nth, nth);
		ret = ml_arm(&ml, ml.guest, PAGES * PAGE, 0);
		done = !ml_injected(fail_nth);
		if (ret) {
			EXPECT_EQ(-ENOMEM, ret);
			check_partial_load(_metadata, &ml, PAGES * PAGE, 10);
		}
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
}

/* A failed EVENTS leaves the object without an events descriptor: it can get one. */
TEST_F(inject, events)
{
	int nth, fd, err, done = 0;
	struct ml ml;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_armed(_metadata, &ml);
		ml_inject(fail_nth, nth);
		fd = ioctl(ml.fd, MUSERLOAD_IOC_EVENTS, 0);
		err = errno;
		done = !ml_injected(fail_nth);
		if (fd < 0) {
			EXPECT_EQ(ENOMEM, err);
			fd = ioctl(ml.fd, MUSERLOAD_IOC_EVENTS, 0);
			ASSERT_LE(0, fd);
		}
		close(fd);
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
}

/*
 * A queue-mode fault from kernel mode queues an event, for a resolver in
 * another thread: if that allocation fails the access fails (EFAULT), and the
 * next one waits and completes. The pipe's own buffer may fail first (ENOMEM).
 */
TEST_F(inject, kernel_fault_event)
{
	int nth, pipefd[2], done = 0;
	struct ml_resolver r;
	char buf[64];
	ssize_t n;
	struct ml ml;

	ASSERT_EQ(0, pipe(pipefd));
	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_armed(_metadata, &ml);
		ASSERT_EQ(0, ml_resolver_start(&r, &ml));
		ml_inject(fail_nth, nth);
		n = write(pipefd[1], ml.guest + PAGE, sizeof(buf));
		done = !ml_injected(fail_nth);
		if (n < 0) {
			EXPECT_TRUE(errno == EFAULT || errno == ENOMEM);
			n = write(pipefd[1], ml.guest + PAGE, sizeof(buf));
		}
		ASSERT_EQ(sizeof(buf), n);
		ASSERT_EQ(sizeof(buf), read(pipefd[0], buf, sizeof(buf)));
		EXPECT_TRUE(ml_check(ml.guest + PAGE, 1));
		ml_resolver_stop(&r);
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
	close(pipefd[0]);
	close(pipefd[1]);
}

TEST_HARNESS_MAIN
