// SPDX-License-Identifier: GPL-2.0
/*
 * Loads: MOVE (zero-copy from staging), COPY, ZERO, WAKE; ranged and vectored;
 * EEXIST leaving the staging page untouched and still waking; DONTWAKE; and
 * the errno of every bad load.
 */
#include <signal.h>
#include <sys/syscall.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 64
#define STAGING_PAGES 16

FIXTURE(load)
{
	struct ml ml;
};

FIXTURE_SETUP(load)
{
	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, STAGING_PAGES * PAGE));
	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, GUEST_PAGES * PAGE, 0));
}

FIXTURE_TEARDOWN(load)
{
	ml_close(&self->ml);
}

TEST_F(load, move)
{
	struct ml *ml = &self->ml;
	struct muserload_stats st;
	__u64 loaded;
	int i;

	for (i = 0; i < 4; i++)
		ml_fill(ml->staging + i * PAGE, 100 + i);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 8 * PAGE, ml->staging, 4 * PAGE,
			     MUSERLOAD_LOAD_MOVE, &loaded));
	EXPECT_EQ(4 * PAGE, loaded);
	for (i = 0; i < 4; i++) {
		EXPECT_TRUE(ml_check(ml->guest + (8 + i) * PAGE, 100 + i));
		/* The staging slot no longer maps the moved page: it reads zeros... */
		EXPECT_TRUE(ml_is_zero(ml->staging + i * PAGE));
	}
	/* ...and writing it does not reach the guest. */
	ml_fill(ml->staging, 55);
	EXPECT_TRUE(ml_check(ml->guest + 8 * PAGE, 100));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(4, st.loads_move);
	EXPECT_EQ(GUEST_PAGES - 4, st.unloaded);
}

/* A staging page never written moves as a zero page. */
TEST_F(load, move_untouched_staging)
{
	struct ml *ml = &self->ml;

	ASSERT_EQ(0, ml_load(ml, ml->guest, ml->staging + 5 * PAGE, PAGE,
			     MUSERLOAD_LOAD_MOVE, NULL));
	EXPECT_TRUE(ml_is_zero(ml->guest));
}

TEST_F(load, copy_and_zero_ranges)
{
	struct ml *ml = &self->ml;
	char *src = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	__u64 loaded;
	int i;

	ASSERT_NE(MAP_FAILED, src);
	for (i = 0; i < 8; i++)
		ml_fill(src + i * PAGE, 200 + i);
	ASSERT_EQ(0, ml_load(ml, ml->guest, src, 8 * PAGE, MUSERLOAD_LOAD_COPY, &loaded));
	EXPECT_EQ(8 * PAGE, loaded);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 8 * PAGE, NULL, 8 * PAGE,
			     MUSERLOAD_LOAD_ZERO, &loaded));
	EXPECT_EQ(8 * PAGE, loaded);
	/* A zero-loaded page is loaded, though nothing is allocated until it is touched. */
	EXPECT_EQ(-EEXIST, ml_load(ml, ml->guest + 9 * PAGE, src, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	for (i = 0; i < 8; i++) {
		EXPECT_TRUE(ml_check(ml->guest + i * PAGE, 200 + i));
		EXPECT_TRUE(ml_is_zero(ml->guest + (8 + i) * PAGE));
	}
	/* The source is the caller's own: COPY left it as it was. */
	EXPECT_TRUE(ml_check(src + 7 * PAGE, 207));
	munmap(src, 8 * PAGE);
}

/* A COPY whose source is an unmapped address: EFAULT, with the pages before it loaded. */
TEST_F(load, copy_partial_efault)
{
	struct ml *ml = &self->ml;
	char *src = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	__u64 loaded;

	ASSERT_NE(MAP_FAILED, src);
	ml_fill(src, 1);
	ASSERT_EQ(0, munmap(src + PAGE, PAGE));
	EXPECT_EQ(-EFAULT, ml_load(ml, ml->guest, src, 2 * PAGE, MUSERLOAD_LOAD_COPY, &loaded));
	EXPECT_EQ(PAGE, loaded);
	EXPECT_TRUE(ml_check(ml->guest, 1));
	munmap(src, PAGE);
}

TEST_F(load, vectored)
{
	struct ml *ml = &self->ml;
	struct muserload_vec vec[4];
	struct muserload_loadv lv = {
		.vec = (uintptr_t)vec,
		.count = 4,
		.mode = MUSERLOAD_LOAD_MOVE,
	};
	int i;

	for (i = 0; i < 4; i++) {
		ml_fill(ml->staging + i * PAGE, 300 + i);
		/* Scattered targets, in any order. */
		vec[i] = (struct muserload_vec){
			.dst = (uintptr_t)ml->guest + (40 - 10 * i) * PAGE,
			.src = (uintptr_t)ml->staging + i * PAGE,
			.len = PAGE,
		};
	}
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(4 * PAGE, lv.loaded);
	for (i = 0; i < 4; i++)
		EXPECT_TRUE(ml_check(ml->guest + (40 - 10 * i) * PAGE, 300 + i));

	/* A vectored load stops at the first EEXIST and says how far it got. */
	ml_fill(ml->staging + 4 * PAGE, 400);
	vec[0] = (struct muserload_vec){ (uintptr_t)ml->guest + 50 * PAGE,
					 (uintptr_t)ml->staging + 4 * PAGE, PAGE };
	vec[1] = (struct muserload_vec){ (uintptr_t)ml->guest + 40 * PAGE,
					 (uintptr_t)ml->staging + 5 * PAGE, PAGE };
	lv.count = 2;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EEXIST, errno);
	EXPECT_EQ(PAGE, lv.loaded);
	EXPECT_TRUE(ml_check(ml->guest + 50 * PAGE, 400));

	lv.count = 0;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	lv.count = MUSERLOAD_LOADV_MAX + 1;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	lv.count = 1;
	lv.vec = 8;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EFAULT, errno);
}

/*
 * A malformed pair anywhere in a vectored load loads nothing, even after good pairs:
 * every pair's shape is checked first. A pair in the wrong region is found as the pairs
 * are loaded, and stops the call there.
 */
TEST_F(load, vectored_bad_shape_loads_nothing)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(8)));
	uintptr_t g = (uintptr_t)ml->guest, s = (uintptr_t)ml->staging;
	struct muserload_vec vec[2] = {
		{ g + 20 * PAGE, (uintptr_t)buf, PAGE },
		{ g + 21 * PAGE + 8, (uintptr_t)buf, PAGE },
	};
	struct muserload_loadv lv = {
		.vec = (uintptr_t)vec,
		.count = 2,
		.mode = MUSERLOAD_LOAD_COPY,
	};
	struct muserload_stats st;

	ml_fill(buf, 20);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(0, lv.loaded);
	vec[1] = (struct muserload_vec){ g + 21 * PAGE, (uintptr_t)buf, 0 };
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	vec[1] = (struct muserload_vec){ g + 21 * PAGE, s, PAGE };
	lv.mode = MUSERLOAD_LOAD_ZERO;
	vec[0].src = 0;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	lv.mode = MUSERLOAD_LOAD_MOVE;
	vec[0].src = s;
	vec[1].src = s + PAGE + 1;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(0, st.loads_copy + st.loads_zero + st.loads_move);
	EXPECT_EQ(GUEST_PAGES, st.unloaded);

	/* A well-shaped pair whose target is staging: the pair before it is loaded. */
	vec[0] = (struct muserload_vec){ g + 20 * PAGE, (uintptr_t)buf, PAGE };
	vec[1] = (struct muserload_vec){ s, (uintptr_t)buf, PAGE };
	lv.mode = MUSERLOAD_LOAD_COPY;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(PAGE, lv.loaded);
	EXPECT_TRUE(ml_check(ml->guest + 20 * PAGE, 20));
}

/*
 * A loader's batch: single pages from consecutive staging slots to scattered guest pages,
 * moved under one zap of staging. A pair naming a page an earlier pair of the same call
 * loaded stops the call there, as if the pairs went one at a time; the slots moved read
 * zeros (refilled), the others keep their data.
 */
TEST_F(load, vectored_batch)
{
	struct ml *ml = &self->ml;
	struct muserload_vec vec[STAGING_PAGES];
	struct muserload_loadv lv = {
		.vec = (uintptr_t)vec,
		.count = STAGING_PAGES,
		.mode = MUSERLOAD_LOAD_MOVE,
	};
	struct muserload_stats st;
	int i;

	for (i = 0; i < STAGING_PAGES; i++) {
		/* Slot 5 is never written: it moves as a zero page. */
		if (i != 5)
			ml_fill(ml->staging + i * PAGE, 500 + i);
		vec[i] = (struct muserload_vec){
			.dst = (uintptr_t)ml->guest + (i * 7 % GUEST_PAGES) * PAGE,
			.src = (uintptr_t)ml->staging + i * PAGE,
			.len = PAGE,
		};
	}
	/* Pair 9 names pair 3's page. */
	vec[9].dst = vec[3].dst;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EEXIST, errno);
	EXPECT_EQ(9 * PAGE, lv.loaded);
	for (i = 0; i < 9; i++) {
		char *page = (char *)(uintptr_t)vec[i].dst;

		EXPECT_TRUE(i == 5 ? ml_is_zero(page) : ml_check(page, 500 + i));
		EXPECT_TRUE(ml_is_zero(ml->staging + i * PAGE));
	}
	EXPECT_TRUE(ml_check((char *)(uintptr_t)vec[3].dst, 503));
	for (i = 9; i < STAGING_PAGES; i++)
		EXPECT_TRUE(ml_check(ml->staging + i * PAGE, 500 + i));
	/* Writes to the refilled slots reach no guest page. */
	ml_fill(ml->staging, 77);
	EXPECT_TRUE(ml_check((char *)(uintptr_t)vec[0].dst, 500));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(9, st.loads_move);
	EXPECT_EQ(GUEST_PAGES - 9, st.unloaded);
	EXPECT_EQ(1, st.eexist);
}

/* EEXIST: counted, stops the range, and the staging page stays with the caller. */
TEST_F(load, eexist_keeps_staging)
{
	struct ml *ml = &self->ml;
	struct muserload_stats st;
	char buf[PAGE] __attribute__((aligned(8)));
	__u64 loaded;

	ml_fill(buf, 1);
	ASSERT_EQ(0, ml_load(ml, ml->guest + PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ml_fill(ml->staging, 10);
	ml_fill(ml->staging + PAGE, 11);
	EXPECT_EQ(-EEXIST, ml_load(ml, ml->guest, ml->staging, 2 * PAGE,
				   MUSERLOAD_LOAD_MOVE, &loaded));
	EXPECT_EQ(PAGE, loaded);
	EXPECT_TRUE(ml_check(ml->guest, 10));
	EXPECT_TRUE(ml_check(ml->guest + PAGE, 1));
	/* The refused staging page is untouched, still mapped, still the caller's. */
	EXPECT_TRUE(ml_check(ml->staging + PAGE, 11));
	EXPECT_EQ(-EEXIST, ml_load(ml, ml->guest + PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	EXPECT_EQ(-EEXIST, ml_load(ml, ml->guest + PAGE, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(3, st.eexist);
}

struct waiter {
	pthread_t thread;
	volatile uint64_t *addr;
	uint64_t word;
};

static void *wait_main(void *arg)
{
	struct waiter *w = arg;

	w->word = *w->addr;
	return NULL;
}

/* A load that loses the race to another load still wakes the page's waiters. */
TEST_F(load, eexist_wakes)
{
	struct ml *ml = &self->ml;
	struct waiter w = { .addr = (uint64_t *)(ml->guest + 6 * PAGE) };
	char buf[PAGE] __attribute__((aligned(8)));
	struct muserload_stats st;

	ASSERT_EQ(0, pthread_create(&w.thread, NULL, wait_main, &w));
	ml_wait_for_waiters(ml, 1);
	ml_fill(buf, 6);
	/* The first load does not wake (DONTWAKE); the one that gets EEXIST does. */
	ASSERT_EQ(0, ml_load(ml, ml->guest + 6 * PAGE, buf, PAGE,
			     MUSERLOAD_LOAD_COPY | MUSERLOAD_LOAD_DONTWAKE, NULL));
	usleep(50000);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.waiters);
	EXPECT_EQ(-EEXIST, ml_load(ml, ml->guest + 6 * PAGE, buf, PAGE,
				   MUSERLOAD_LOAD_COPY, NULL));
	ASSERT_EQ(0, pthread_join(w.thread, NULL));
	EXPECT_EQ(((uint64_t *)buf)[0], w.word);
}

/* DONTWAKE, then WAKE over the range. */
TEST_F(load, dontwake_then_wake)
{
	struct ml *ml = &self->ml;
	struct waiter w = { .addr = (uint64_t *)(ml->guest + 12 * PAGE) };
	struct muserload_stats st;
	__u64 loaded;

	ASSERT_EQ(0, pthread_create(&w.thread, NULL, wait_main, &w));
	ml_wait_for_waiters(ml, 1);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 12 * PAGE, NULL, PAGE,
			     MUSERLOAD_LOAD_ZERO | MUSERLOAD_LOAD_DONTWAKE, NULL));
	usleep(50000);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.waiters);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 12 * PAGE, NULL, PAGE,
			     MUSERLOAD_LOAD_WAKE, &loaded));
	EXPECT_EQ(PAGE, loaded);
	ASSERT_EQ(0, pthread_join(w.thread, NULL));
	EXPECT_EQ(0, w.word);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.wakes);
}

static int load_errno(struct ml *ml, __u64 dst, __u64 src, __u64 len, __u64 mode)
{
	struct muserload_load l = { .dst = dst, .src = src, .len = len, .mode = mode };

	return ioctl(ml->fd, MUSERLOAD_IOC_LOAD, &l) ? errno : 0;
}

TEST_F(load, bad_input)
{
	struct ml *ml = &self->ml;
	__u64 g = (uintptr_t)ml->guest, s = (uintptr_t)ml->staging;
	struct muserload_stats st;
	char buf[PAGE];

	EXPECT_EQ(EINVAL, load_errno(ml, g, 0, PAGE, 0));
	EXPECT_EQ(EINVAL, load_errno(ml, g, 0, PAGE, 5));
	EXPECT_EQ(EINVAL, load_errno(ml, g, 0, PAGE, MUSERLOAD_LOAD_ZERO | (1 << 9)));
	EXPECT_EQ(EINVAL, load_errno(ml, g + 1, 0, PAGE, MUSERLOAD_LOAD_ZERO));
	EXPECT_EQ(EINVAL, load_errno(ml, g, 0, 0, MUSERLOAD_LOAD_ZERO));
	EXPECT_EQ(EINVAL, load_errno(ml, g, 0, PAGE - 1, MUSERLOAD_LOAD_ZERO));
	EXPECT_EQ(EINVAL, load_errno(ml, g, s, PAGE, MUSERLOAD_LOAD_ZERO));
	EXPECT_EQ(EINVAL, load_errno(ml, g, s, PAGE, MUSERLOAD_LOAD_WAKE));
	EXPECT_EQ(EINVAL, load_errno(ml, -PAGE, 0, 2 * PAGE, MUSERLOAD_LOAD_ZERO));
	/* Target outside guest memory: staging, or past the mapping. */
	EXPECT_EQ(EINVAL, load_errno(ml, s, 0, PAGE, MUSERLOAD_LOAD_ZERO));
	EXPECT_EQ(EFAULT, load_errno(ml, g, 0, (GUEST_PAGES + 1) * PAGE, MUSERLOAD_LOAD_ZERO));
	EXPECT_EQ(EFAULT, load_errno(ml, (uintptr_t)buf & ~(PAGE - 1), 0, PAGE,
				     MUSERLOAD_LOAD_ZERO));
	/* MOVE from anything but this object's staging. */
	EXPECT_EQ(EINVAL, load_errno(ml, g, g + PAGE, PAGE, MUSERLOAD_LOAD_MOVE));
	EXPECT_EQ(EFAULT, load_errno(ml, g, (uintptr_t)buf & ~(PAGE - 1), PAGE,
				     MUSERLOAD_LOAD_MOVE));
	EXPECT_EQ(EINVAL, load_errno(ml, g, s + 1, PAGE, MUSERLOAD_LOAD_MOVE));
	EXPECT_EQ(EFAULT, load_errno(ml, g, s, (STAGING_PAGES + 1) * PAGE,
				     MUSERLOAD_LOAD_MOVE));
	EXPECT_EQ(EFAULT, load_errno(ml, g, 8, PAGE, MUSERLOAD_LOAD_COPY));
	EXPECT_EQ(EFAULT, ioctl(ml->fd, MUSERLOAD_IOC_LOAD, NULL) ? errno : 0);
	/* None of it loaded anything. */
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(GUEST_PAGES, st.unloaded);
	EXPECT_EQ(0, st.loads_move + st.loads_copy + st.loads_zero);
}

/*
 * COPY checks its range's shape before it copies: a length of 0 loaded nothing
 * and succeeded, one not a page multiple loaded its whole pages and succeeded,
 * and a wrapping one failed with EFAULT (found by the fuzzer).
 */
TEST_F(load, copy_bad_shape)
{
	struct ml *ml = &self->ml;
	__u64 g = (uintptr_t)ml->guest;
	struct muserload_stats st;
	char buf[2 * PAGE] __attribute__((aligned(8)));

	EXPECT_EQ(EINVAL, load_errno(ml, g, (uintptr_t)buf, 0, MUSERLOAD_LOAD_COPY));
	EXPECT_EQ(EINVAL, load_errno(ml, g, (uintptr_t)buf, PAGE + 8, MUSERLOAD_LOAD_COPY));
	EXPECT_EQ(EINVAL, load_errno(ml, g, (uintptr_t)buf, -g, MUSERLOAD_LOAD_COPY));
	EXPECT_EQ(EINVAL, load_errno(ml, g + 8, (uintptr_t)buf, PAGE, MUSERLOAD_LOAD_COPY));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(GUEST_PAGES, st.unloaded);
	EXPECT_EQ(0, st.loads_copy);
}

/* Loads into pages never armed fill them; loads where a page is, EEXIST. */
TEST(unarmed_pages)
{
	struct ml ml;
	char buf[PAGE] __attribute__((aligned(8)));

	ASSERT_EQ(0, ml_open(&ml, 4 * PAGE, 0));
	ml_fill(buf, 3);
	ASSERT_EQ(0, ml_load(&ml, ml.guest, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	EXPECT_TRUE(ml_check(ml.guest, 3));
	(void)*(volatile char *)(ml.guest + PAGE);
	EXPECT_EQ(-EEXIST, ml_load(&ml, ml.guest + PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ml_close(&ml);
}

TEST_HARNESS_MAIN
