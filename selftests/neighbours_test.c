// SPDX-License-Identifier: GPL-2.0
/*
 * Faults and loads of neighbouring pages of one object, all at once. Each page
 * has a lock of its own, so they go on side by side, and every semantic must
 * still hold page by page: a page is loaded once (the bytes that the loads
 * report add up to the object, and STATS agrees), holds its own content, and
 * no faulting thread is left asleep. Faulting threads own interleaved pages
 * (thread t: t, t + T, t + 2T, ...), so that every page one of them faults on
 * has another's pages on both sides, while loaders stream the same pages in
 * batches, vectored MOVEs going up and down at once.
 */
#include <signal.h>
#include <stdbool.h>
#include <sys/sysinfo.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define PAGES 1024
#define BATCH 8		/* pages per streamed load */
#define MAX_FAULTERS 16
/* Staging: a slot per resolver, then BATCH slots for each of two streamers. */
#define STREAMER_SLOT(s) (MAX_FAULTERS + (s) * BATCH)
#define STAGING_SLOTS (MAX_FAULTERS + 2 * BATCH)

struct neighbours {
	struct ml ml;
	int events;
	int faulters;
	int mismatches;
	int load_errors;
	int first_error;		/* the errno of the first load error */
	unsigned long long loaded;	/* bytes every load reported, added up */
	char *source;			/* every page's content, for COPY */
};

struct role {
	struct neighbours *n;
	int index;
};

/* The handler's object: signal handlers get no argument. */
static struct neighbours *sig_n;

static void count_loaded(struct neighbours *n, __u64 bytes)
{
	__atomic_fetch_add(&n->loaded, bytes, __ATOMIC_RELAXED);
}

/* A load's outcome: its bytes counted, EEXIST allowed (another got there first). */
static void account(struct neighbours *n, int ret, __u64 loaded)
{
	int none = 0;

	count_loaded(n, loaded);
	if (ret && ret != -EEXIST) {
		__atomic_fetch_add(&n->load_errors, 1, __ATOMIC_RELAXED);
		__atomic_compare_exchange_n(&n->first_error, &none, -ret, false,
					    __ATOMIC_RELAXED, __ATOMIC_RELAXED);
	}
}

/* Signal mode: the faulting thread loads its own page, copied from the source. */
static void copy_handler(int sig, siginfo_t *info, void *uc)
{
	struct neighbours *n = sig_n;
	unsigned long page = ((char *)info->si_addr - n->ml.guest) / PAGE;
	__u64 loaded = 0;
	int ret;

	ret = ml_load(&n->ml, n->ml.guest + page * PAGE, n->source + page * PAGE,
		      PAGE, MUSERLOAD_LOAD_COPY, &loaded);
	account(n, ret, loaded);
}

/* Reads each of its pages in turn, checking its content. */
static void *faulter(void *arg)
{
	struct role *r = arg;
	struct neighbours *n = r->n;
	unsigned long page;

	for (page = r->index; page < PAGES; page += n->faulters)
		if (!ml_check(n->ml.guest + page * PAGE, page))
			__atomic_fetch_add(&n->mismatches, 1, __ATOMIC_RELAXED);
	return NULL;
}

/* COPYs the object in batches of BATCH pages, going on after each EEXIST. */
static void *copy_streamer(void *arg)
{
	struct neighbours *n = arg;
	unsigned long page = 0, len;
	__u64 loaded;
	int ret;

	while (page < PAGES) {
		len = PAGES - page < BATCH ? PAGES - page : BATCH;
		loaded = 0;
		ret = ml_load(&n->ml, n->ml.guest + page * PAGE, n->source + page * PAGE,
			      len * PAGE, MUSERLOAD_LOAD_COPY, &loaded);
		account(n, ret, loaded);
		/* Past the pages loaded and the one that was there already. */
		page += ret ? loaded / PAGE + 1 : len;
	}
	return NULL;
}

/* Queue mode: each resolver MOVEs the pages of the events it reads from its own slot. */
static void *resolver(void *arg)
{
	struct role *r = arg;
	struct neighbours *n = r->n;
	char *staging = n->ml.staging + r->index * PAGE;
	struct muserload_event ev;
	unsigned long page;
	__u64 loaded;
	int ret;

	while (read(n->events, &ev, sizeof(ev)) == sizeof(ev)) {
		page = ev.offset / PAGE;
		ml_fill(staging, page);
		loaded = 0;
		ret = ml_load(&n->ml, n->ml.guest + page * PAGE, staging, PAGE,
			      MUSERLOAD_LOAD_MOVE, &loaded);
		account(n, ret, loaded);
	}
	return NULL;
}

/*
 * MOVEs the object BATCH pages per call, one pair per page, the pairs of a call
 * going down the pages (streamer 0) or up (streamer 1), from the streamer's
 * own staging slots; after an EEXIST it goes on with the pairs after it.
 */
static void *move_streamer(void *arg)
{
	struct role *r = arg;
	struct neighbours *n = r->n;
	char *staging = n->ml.staging + STREAMER_SLOT(r->index) * PAGE;
	struct muserload_vec vec[BATCH];
	struct muserload_loadv loadv;
	unsigned long base, page;
	int i, first, ret;

	for (base = 0; base < PAGES; base += BATCH) {
		for (i = 0; i < BATCH; i++) {
			page = r->index ? base + i : base + BATCH - 1 - i;
			ml_fill(staging + i * PAGE, page);
			vec[i].dst = (uintptr_t)(n->ml.guest + page * PAGE);
			vec[i].src = (uintptr_t)(staging + i * PAGE);
			vec[i].len = PAGE;
		}
		for (first = 0; first < BATCH; first += loadv.loaded / PAGE + 1) {
			loadv = (struct muserload_loadv){
				.vec = (uintptr_t)&vec[first],
				.count = BATCH - first,
				.mode = MUSERLOAD_LOAD_MOVE,
			};
			ret = ioctl(n->ml.fd, MUSERLOAD_IOC_LOADV, &loadv) ? -errno : 0;
			account(n, ret, loadv.loaded);
			if (!ret)
				break;
		}
	}
	return NULL;
}

static int faulters(void)
{
	int count = 2 * get_nprocs();

	return count > MAX_FAULTERS ? MAX_FAULTERS : count;
}

/* Every page holds its content, was loaded once, and nothing is left waiting. */
static void check_all_loaded(struct __test_metadata *_metadata, struct neighbours *n,
			     bool moved)
{
	struct muserload_stats st;
	unsigned long page;

	for (page = 0; page < PAGES; page++)
		ASSERT_TRUE(ml_check(n->ml.guest + page * PAGE, page))
			TH_LOG("page %lu", page);
	EXPECT_EQ(0, n->mismatches);
	EXPECT_EQ(0, n->load_errors) TH_LOG("the first: errno %d", n->first_error);
	EXPECT_EQ(PAGES * PAGE, n->loaded);
	ASSERT_EQ(0, ml_stats(&n->ml, &st));
	EXPECT_EQ(PAGES, moved ? st.loads_move : st.loads_copy);
	EXPECT_EQ(0, st.unloaded);
	EXPECT_EQ(0, st.waiters);
	TH_LOG("%llu page-lock takings, %llu found held, %llu us waited",
	       st.pages_lock_taken, st.pages_lock_contended, st.pages_lock_wait_ns / 1000);
}

FIXTURE(nb)
{
	struct neighbours n;
};

FIXTURE_SETUP(nb)
{
	unsigned long page;

	memset(&self->n, 0, sizeof(self->n));
	ASSERT_EQ(0, ml_open(&self->n.ml, PAGES * PAGE, STAGING_SLOTS * PAGE));
	self->n.faulters = faulters();
	self->n.source = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, self->n.source);
	for (page = 0; page < PAGES; page++)
		ml_fill(self->n.source + page * PAGE, page);
	sig_n = &self->n;
}

FIXTURE_TEARDOWN(nb)
{
	munmap(self->n.source, PAGES * PAGE);
	ml_close(&self->n.ml);
}

/*
 * Signal mode: each faulting thread COPYs its own pages in its handler while a
 * streamer COPYs the same pages in batches.
 */
TEST_F_TIMEOUT(nb, signal_faults_beside_copies, 120)
{
	struct sigaction sa = { .sa_sigaction = copy_handler, .sa_flags = SA_SIGINFO };
	struct role roles[MAX_FAULTERS];
	pthread_t th[MAX_FAULTERS], streamer;
	int i;

	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));
	ASSERT_EQ(0, ml_arm(&self->n.ml, self->n.ml.guest, PAGES * PAGE, SIGUSR1));
	for (i = 0; i < self->n.faulters; i++) {
		roles[i] = (struct role){ &self->n, i };
		ASSERT_EQ(0, pthread_create(&th[i], NULL, faulter, &roles[i]));
	}
	ASSERT_EQ(0, pthread_create(&streamer, NULL, copy_streamer, &self->n));
	for (i = 0; i < self->n.faulters; i++)
		ASSERT_EQ(0, pthread_join(th[i], NULL));
	ASSERT_EQ(0, pthread_join(streamer, NULL));
	check_all_loaded(_metadata, &self->n, false);
	signal(SIGUSR1, SIG_DFL);
}

/*
 * Queue mode: faulting threads sleep on their pages, a resolver per faulting
 * thread MOVEs them, and two streamers MOVE the same pages in vectored calls,
 * one going down the pages of each call and one going up, so that a call's
 * later pairs find their pages held by the other.
 */
TEST_F_TIMEOUT(nb, queue_faults_beside_vectored_moves, 120)
{
	struct role roles[MAX_FAULTERS], resolvers[MAX_FAULTERS], streamers[2];
	pthread_t th[MAX_FAULTERS], res[MAX_FAULTERS], str[2];
	int i;

	self->n.events = ioctl(self->n.ml.fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, self->n.events);
	ASSERT_EQ(0, ml_arm(&self->n.ml, self->n.ml.guest, PAGES * PAGE, 0));
	for (i = 0; i < self->n.faulters; i++) {
		resolvers[i] = (struct role){ &self->n, i };
		ASSERT_EQ(0, pthread_create(&res[i], NULL, resolver, &resolvers[i]));
	}
	for (i = 0; i < self->n.faulters; i++) {
		roles[i] = (struct role){ &self->n, i };
		ASSERT_EQ(0, pthread_create(&th[i], NULL, faulter, &roles[i]));
	}
	for (i = 0; i < 2; i++) {
		streamers[i] = (struct role){ &self->n, i };
		ASSERT_EQ(0, pthread_create(&str[i], NULL, move_streamer, &streamers[i]));
	}
	for (i = 0; i < self->n.faulters; i++)
		ASSERT_EQ(0, pthread_join(th[i], NULL));
	for (i = 0; i < 2; i++)
		ASSERT_EQ(0, pthread_join(str[i], NULL));
	check_all_loaded(_metadata, &self->n, true);
	/* Resolvers blocked in read() end with the abort's end of file. */
	ASSERT_EQ(0, ioctl(self->n.ml.fd, MUSERLOAD_IOC_ABORT));
	for (i = 0; i < self->n.faulters; i++)
		pthread_join(res[i], NULL);
	close(self->n.events);
}

TEST_HARNESS_MAIN
