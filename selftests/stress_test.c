// SPDX-License-Identifier: GPL-2.0
/*
 * A stress test in the manner of uffd-stress: per round, every page is armed;
 * faulting threads (two per CPU) race on random pages and check what they
 * read; a resolver serves their events with zero-copy MOVE loads; a background
 * loader streams every page, ignoring EEXIST; a forced load of a page known to
 * be loaded must get EEXIST. After each round every page is verified.
 */
#include <stdlib.h>
#include <sys/sysinfo.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define PAGES 1024
#define ROUNDS 4
#define STAGING_SLOTS 33	/* 16 for the resolver, 16 for the streamer, 1 forced */
#define FORCED_SLOT 32
#define TOUCHES 2000

struct stress {
	struct ml ml;
	int events;
	unsigned int round;
	volatile int mismatches;
	volatile int load_errors;
};

static uint64_t seed_of(unsigned int round, unsigned long page)
{
	return (uint64_t)round * PAGES + page;
}

/* Writes page @page's content for this round into staging slot @slot, then MOVEs it. */
static int move_page(struct stress *s, unsigned int slot, unsigned long page)
{
	char *staging = s->ml.staging + slot * PAGE;

	ml_fill(staging, seed_of(s->round, page));
	return ml_load(&s->ml, s->ml.guest + page * PAGE, staging, PAGE,
		       MUSERLOAD_LOAD_MOVE, NULL);
}

static void *resolver(void *arg)
{
	struct stress *s = arg;
	struct muserload_event ev[16];
	unsigned int slot = 0;
	ssize_t n;
	int i, ret;

	while ((n = read(s->events, ev, sizeof(ev))) > 0) {
		for (i = 0; i < n / (ssize_t)sizeof(ev[0]); i++) {
			ret = move_page(s, slot++ % 16, ev[i].offset / PAGE);
			if (ret && ret != -EEXIST)
				s->load_errors++;
		}
	}
	return NULL;
}

static void *streamer(void *arg)
{
	struct stress *s = arg;
	unsigned long page;
	int ret;

	for (page = 0; page < PAGES; page++) {
		ret = move_page(s, 16 + page % 16, page);
		if (ret && ret != -EEXIST)
			s->load_errors++;
	}
	return NULL;
}

static void *faulter(void *arg)
{
	struct stress *s = arg;
	unsigned int rnd = (uintptr_t)&rnd ^ s->round;
	unsigned long page;
	int i;

	for (i = 0; i < TOUCHES; i++) {
		page = rand_r(&rnd) % PAGES;
		if (!ml_check(s->ml.guest + page * PAGE, seed_of(s->round, page)))
			s->mismatches++;
	}
	return NULL;
}

TEST(stress)
{
	int nthreads = 2 * get_nprocs();
	pthread_t res, str, *th = calloc(nthreads, sizeof(*th));
	struct muserload_stats st;
	struct stress s = { 0 };
	unsigned long page;
	__u64 forced_eexist = 0;
	int i;

	ASSERT_NE(NULL, th);
	ASSERT_EQ(0, ml_open(&s.ml, PAGES * PAGE, STAGING_SLOTS * PAGE));
	s.events = ioctl(s.ml.fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, s.events);
	ASSERT_EQ(0, pthread_create(&res, NULL, resolver, &s));

	for (s.round = 1; s.round <= ROUNDS; s.round++) {
		ASSERT_EQ(0, ml_arm(&s.ml, s.ml.guest, PAGES * PAGE, 0));
		for (i = 0; i < nthreads; i++)
			ASSERT_EQ(0, pthread_create(&th[i], NULL, faulter, &s));
		ASSERT_EQ(0, pthread_create(&str, NULL, streamer, &s));
		/* A load of a page someone just read must be refused. */
		page = rand() % PAGES;
		ASSERT_TRUE(ml_check(s.ml.guest + page * PAGE, seed_of(s.round, page)));
		ASSERT_EQ(-EEXIST, move_page(&s, FORCED_SLOT, page));
		forced_eexist++;
		for (i = 0; i < nthreads; i++)
			ASSERT_EQ(0, pthread_join(th[i], NULL));
		ASSERT_EQ(0, pthread_join(str, NULL));
		for (page = 0; page < PAGES; page++) {
			ASSERT_TRUE(ml_check(s.ml.guest + page * PAGE, seed_of(s.round, page)))
				TH_LOG("round %u page %lu", s.round, page);
		}
		ASSERT_EQ(0, s.mismatches);
		ASSERT_EQ(0, s.load_errors);
		ASSERT_EQ(0, ml_stats(&s.ml, &st));
		ASSERT_EQ(0, st.unloaded);
		ASSERT_EQ(0, st.waiters);
	}
	ASSERT_EQ(0, ml_stats(&s.ml, &st));
	/* Every page was loaded exactly once per round. */
	EXPECT_EQ(ROUNDS * PAGES, st.loads_move);
	EXPECT_LE(forced_eexist, st.eexist);
	TH_LOG("%llu faults, %llu waits, %llu EEXIST, max wait %llu us",
	       st.faults_queue_user, st.fault_waits, st.eexist, st.wait_ns_max / 1000);
	/* A reader blocked in read() holds the descriptor open: end it with ABORT. */
	ASSERT_EQ(0, ioctl(s.ml.fd, MUSERLOAD_IOC_ABORT));
	pthread_join(res, NULL);
	close(s.events);
	ml_close(&s.ml);
	free(th);
}

TEST_HARNESS_MAIN
