// SPDX-License-Identifier: GPL-2.0
/*
 * The object: setup, mappings, zero fill, arming and discard, and the errno of
 * every bad setup, mmap and arm.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 64
#define STAGING_PAGES 16

FIXTURE(obj)
{
	struct ml ml;
};

FIXTURE_SETUP(obj)
{
	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, STAGING_PAGES * PAGE));
}

FIXTURE_TEARDOWN(obj)
{
	ml_close(&self->ml);
}

static int setup_errno(int fd, __u64 size, __u64 staging, __u64 flags)
{
	struct muserload_setup s = {
		.size = size,
		.staging_size = staging,
		.flags = flags,
	};

	return ioctl(fd, MUSERLOAD_IOC_SETUP, &s) ? errno : 0;
}

TEST(setup_bad_input)
{
	int fd = open(MUSERLOAD_DEV, O_RDWR);

	ASSERT_LE(0, fd);
	EXPECT_EQ(EINVAL, setup_errno(fd, 0, 0, 0));
	EXPECT_EQ(EINVAL, setup_errno(fd, PAGE + 1, 0, 0));
	EXPECT_EQ(EINVAL, setup_errno(fd, PAGE, 1, 0));
	EXPECT_EQ(EINVAL, setup_errno(fd, PAGE, 0, 1));
	EXPECT_EQ(EINVAL, setup_errno(fd, MUSERLOAD_STAGING_OFFSET + PAGE, 0, 0));
	EXPECT_EQ(EINVAL, setup_errno(fd, PAGE, MUSERLOAD_STAGING_MAX + PAGE, 0));
	EXPECT_EQ(EFAULT, ioctl(fd, MUSERLOAD_IOC_SETUP, NULL) ? errno : 0);
	/* Nothing above set it up: mmap is refused, a good setup works once. */
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0));
	EXPECT_EQ(0, setup_errno(fd, PAGE, 0, 0));
	EXPECT_EQ(EBUSY, setup_errno(fd, PAGE, 0, 0));
	close(fd);
}

#define SIZES_CGROUP "/sys/fs/cgroup/muserload-setup-sizes"
/* Bookkeeping up to here must fit the cgroup; above it, ENOMEM is fine too. */
#define SIZES_LIMIT (64UL << 20)
#define SIZES_MUST_FIT (16UL << 20)
/* What may stay charged after an object is closed (page tables, slab, per-CPU stocks). */
#define SIZES_SLACK (4UL << 20)

/*
 * What the walker of setup_every_size (a child in the cgroup) and the test share, in a
 * page touched before the child joined the cgroup: the child must allocate nothing it
 * does not have to, since a failed vmalloc() gives its pages back only later, from a
 * worker, and a task of a cgroup that is still full then is OOM-killed.
 */
struct sizes_walk {
	volatile int turn;	/* 1: the child's turn; 0: the test's */
	volatile int step;	/* 0: open and SETUP size; 1: SETUP a page, close; -1: exit */
	volatile __u64 size;
	volatile int got;	/* the step's errno, 0 for success */
};

/* The walker: does what it is told, one step per turn. */
static int sizes_walker(struct sizes_walk *w)
{
	char me[32];
	int fd = -1;

	snprintf(me, sizeof(me), "%d", getpid());
	if (ml_write_file(SIZES_CGROUP "/cgroup.procs", me) || setgid(65534) || setuid(65534))
		return 1;
	for (;;) {
		while (!w->turn)
			usleep(1000);
		if (w->step < 0)
			return 0;
		if (w->step == 0) {
			fd = open(MUSERLOAD_DEV, O_RDWR);
			w->got = fd < 0 ? errno : setup_errno(fd, w->size, 0, 0);
		} else {
			w->got = w->got ? setup_errno(fd, PAGE, 0, 0) : 0;
			close(fd);
		}
		w->turn = 0;
	}
}

/* The cgroup's memory.current, read by the test (outside the cgroup). */
static long sizes_usage(void)
{
	return ml_read_key(SIZES_CGROUP "/memory.current", "");
}

/*
 * Gives the walker one step and waits for it; then waits up to 10 s for the cgroup to
 * come back to @base + SIZES_SLACK. Returns the step's errno (-1: the walker is gone).
 */
static int sizes_step(struct sizes_walk *w, pid_t walker, int step, long base, long *left)
{
	int i;

	w->step = step;
	w->turn = 1;
	for (i = 0; w->turn; i++) {
		if (i % 1000 == 0 && waitpid(walker, NULL, WNOHANG) != 0)
			return -1;
		usleep(1000);
	}
	for (i = 0; i < 1000 && (*left = sizes_usage() - base) > (long)SIZES_SLACK; i++)
		usleep(10000);
	return w->got;
}

/*
 * Every size SETUP's range allows, as a user without privileges in a cgroup of
 * SIZES_LIMIT: 0, a page, either side of each power of two from 4 GiB to 16 TiB, the
 * maximum and a page more. Each gets 0, ENOMEM (its 12 bytes a page do not fit) or EINVAL
 * (outside the ABI): never a WARN (the suite fails on any). After a failure the object
 * still takes a one-page setup, and closing it gives back all it was charged.
 */
TEST_F_TIMEOUT(obj, setup_every_size, 300)
{
	struct sizes_walk *w = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	__u64 sizes[3 * 13 + 4], size;
	int n = 0, i, k, want, got, status;
	char limit[32];
	long base, left;
	pid_t walker;

	ASSERT_NE(MAP_FAILED, w);
	memset(w, 0, sizeof(*w));
	ASSERT_EQ(0, ml_write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory"));
	ASSERT_TRUE(mkdir(SIZES_CGROUP, 0755) == 0 || errno == EEXIST);
	snprintf(limit, sizeof(limit), "%lu", SIZES_LIMIT);
	ASSERT_EQ(0, ml_write_file(SIZES_CGROUP "/memory.max", limit));
	walker = fork();
	ASSERT_LE(0, walker);
	if (walker == 0)
		_exit(sizes_walker(w));

	sizes[n++] = 0;
	sizes[n++] = PAGE;
	sizes[n++] = MUSERLOAD_STAGING_OFFSET;
	sizes[n++] = MUSERLOAD_STAGING_OFFSET + PAGE;
	for (k = 32; k <= 44; k++) {
		sizes[n++] = (1ULL << k) - PAGE;
		sizes[n++] = 1ULL << k;
		sizes[n++] = (1ULL << k) + PAGE;
	}
	/* The walker's own charges (its stack, its page tables) are the base. */
	usleep(100000);
	base = sizes_usage();
	for (i = 0; i < n; i++) {
		size = sizes[i];
		w->size = size;
		got = sizes_step(w, walker, 0, base, &left);
		if (size == 0 || size > MUSERLOAD_STAGING_OFFSET)
			want = EINVAL;
		else if (size / PAGE * 12 <= SIZES_MUST_FIT)
			want = 0;
		else
			want = got == ENOMEM ? ENOMEM : 0;
		EXPECT_EQ(want, got) TH_LOG("SETUP of %#llx bytes", (unsigned long long)size);
		EXPECT_EQ(0, sizes_step(w, walker, 1, base, &left))
			TH_LOG("a page after SETUP of %#llx bytes failed", (unsigned long long)size);
		EXPECT_GE((long)SIZES_SLACK, left)
			TH_LOG("SETUP of %#llx bytes: %ld bytes still charged 10 s after close",
			       (unsigned long long)size, left);
	}
	w->step = -1;
	w->turn = 1;
	ASSERT_EQ(walker, waitpid(walker, &status, 0));
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	EXPECT_EQ(0, rmdir(SIZES_CGROUP));
	munmap(w, PAGE);
}

TEST_F(obj, mmap_bad_input)
{
	int fd = self->ml.fd;

	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE, fd, 0));
	EXPECT_EQ(EINVAL, errno);
	/* Past guest memory, past staging, straddling the two. */
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd,
				   (GUEST_PAGES - 1) * PAGE));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd,
				   MUSERLOAD_STAGING_OFFSET + STAGING_PAGES * PAGE));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd,
				   MUSERLOAD_STAGING_OFFSET - PAGE));
	EXPECT_EQ(EINVAL, errno);
}

TEST_F(obj, zero_fill_and_shared)
{
	char *second;
	size_t i;

	for (i = 0; i < GUEST_PAGES; i++)
		ASSERT_TRUE(ml_is_zero(self->ml.guest + i * PAGE));
	ASSERT_TRUE(ml_is_zero(self->ml.staging));
	ml_fill(self->ml.guest + 3 * PAGE, 3);
	/* A second mapping of the same object sees the same page. */
	second = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, self->ml.fd, 3 * PAGE);
	ASSERT_NE(MAP_FAILED, second);
	ASSERT_TRUE(ml_check(second, 3));
	munmap(second, PAGE);
}

TEST_F(obj, objects_are_separate)
{
	struct ml other;

	ASSERT_EQ(0, ml_open(&other, GUEST_PAGES * PAGE, 0));
	ml_fill(self->ml.guest, 1);
	ASSERT_TRUE(ml_is_zero(other.guest));
	/* An address of another object is not ours to arm. */
	EXPECT_EQ(-EFAULT, ml_arm(&self->ml, other.guest, PAGE, 0));
	ml_close(&other);
}

static int arm_errno(struct ml *ml, __u64 start, __u64 len, __u32 sig, __u32 flags)
{
	struct muserload_arm a = {
		.start = start,
		.len = len,
		.signal = sig,
		.flags = flags,
	};

	return ioctl(ml->fd, MUSERLOAD_IOC_ARM, &a) ? errno : 0;
}

TEST_F(obj, arm_bad_input)
{
	struct ml *ml = &self->ml;
	__u64 g = (uintptr_t)ml->guest;
	struct muserload_stats st;
	char *anon;

	EXPECT_EQ(EINVAL, arm_errno(ml, g + 1, PAGE, 0, 0));
	EXPECT_EQ(EINVAL, arm_errno(ml, g, PAGE + 1, 0, 0));
	EXPECT_EQ(EINVAL, arm_errno(ml, g, 0, 0, 0));
	EXPECT_EQ(EINVAL, arm_errno(ml, g, PAGE, 0, 1));
	EXPECT_EQ(EINVAL, arm_errno(ml, g, PAGE, SIGKILL, 0));
	EXPECT_EQ(EINVAL, arm_errno(ml, g, PAGE, SIGSTOP, 0));
	EXPECT_EQ(EINVAL, arm_errno(ml, g, PAGE, 65, 0));
	EXPECT_EQ(EINVAL, arm_errno(ml, -PAGE, 2 * PAGE, 0, 0));
	/* Past the mapping, unmapped memory, someone else's memory, staging. */
	EXPECT_EQ(EFAULT, arm_errno(ml, g, (GUEST_PAGES + 1) * PAGE, 0, 0));
	EXPECT_EQ(EFAULT, arm_errno(ml, 4096, PAGE, 0, 0));
	anon = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, anon);
	EXPECT_EQ(EFAULT, arm_errno(ml, (uintptr_t)anon, PAGE, 0, 0));
	munmap(anon, PAGE);
	EXPECT_EQ(EINVAL, arm_errno(ml, (uintptr_t)ml->staging, PAGE, 0, 0));
	EXPECT_EQ(EFAULT, ioctl(ml->fd, MUSERLOAD_IOC_ARM, NULL) ? errno : 0);
	/* Nothing was armed by any of it. */
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(0, st.unloaded);
}

/* Arming discards what was there: the pages go, and a load fills them again. */
TEST_F(obj, arm_discards)
{
	struct ml *ml = &self->ml;
	struct muserload_stats st;
	char buf[PAGE] __attribute__((aligned(8)));
	__u64 loaded;

	ml_fill(ml->guest, 7);
	ml_fill(ml->guest + PAGE, 8);
	ASSERT_EQ(0, ml_arm(ml, ml->guest, 2 * PAGE, 0));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(2, st.unloaded);
	/* Re-arming an armed page does not count it twice. */
	ASSERT_EQ(0, ml_arm(ml, ml->guest, PAGE, 0));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(2, st.unloaded);

	ml_fill(buf, 9);
	ASSERT_EQ(0, ml_load(ml, ml->guest, buf, PAGE, MUSERLOAD_LOAD_COPY, &loaded));
	EXPECT_EQ(PAGE, loaded);
	ASSERT_EQ(0, ml_load(ml, ml->guest + PAGE, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL));
	/* The old contents are gone, from this mapping and everywhere. */
	EXPECT_TRUE(ml_check(ml->guest, 9));
	EXPECT_TRUE(ml_is_zero(ml->guest + PAGE));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(0, st.unloaded);
	EXPECT_EQ(1, st.loads_copy);
	EXPECT_EQ(1, st.loads_zero);
}

/* The discard reaches a child's shared mapping too. */
TEST_F(obj, arm_discards_in_child)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(8)));
	int to_child[2], to_parent[2];
	char c = 0;
	pid_t pid;
	int status;

	ASSERT_EQ(0, pipe(to_child));
	ASSERT_EQ(0, pipe(to_parent));
	ml_fill(ml->guest, 5);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		/* The child sees the parent's page, then the page loaded after the discard. */
		if (!ml_check(ml->guest, 5))
			_exit(1);
		if (write(to_parent[1], &c, 1) != 1 || read(to_child[0], &c, 1) != 1)
			_exit(2);
		_exit(ml_check(ml->guest, 6) ? 0 : 3);
	}
	ASSERT_EQ(1, read(to_parent[0], &c, 1));
	ASSERT_EQ(0, ml_arm(ml, ml->guest, PAGE, 0));
	ml_fill(buf, 6);
	ASSERT_EQ(0, ml_load(ml, ml->guest, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ASSERT_EQ(1, write(to_child[1], &c, 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
}

TEST_F(obj, abort_without_waiters)
{
	pid_t pid;
	int status;

	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, PAGE, 0));
	ASSERT_EQ(0, ioctl(self->ml.fd, MUSERLOAD_IOC_ABORT));
	/* After abort, touching an unloaded page is SIGBUS; a loaded one still works. */
	pid = ml_fork_toucher(self->ml.guest);
	ASSERT_LE(0, pid);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	ASSERT_EQ(SIGBUS, WTERMSIG(status));
	ml_fill(self->ml.guest + PAGE, 2);
	ASSERT_TRUE(ml_check(self->ml.guest + PAGE, 2));
}

struct race {
	struct ml *ml;
	volatile int stop;
	volatile unsigned long long worst;
	int pages;	/* how many pages the loops go round: all if 0 */
};

/* The page after @i that the loops of @r go to. */
static int next_page(const struct race *r, int i)
{
	return (i + 1) % (r->pages ? r->pages : GUEST_PAGES);
}

/* Arms one page at a time, round the object: many arms, each one short. */
static void *arm_loop(void *arg)
{
	struct race *r = arg;
	int i = 0;

	while (!r->stop) {
		ml_arm(r->ml, r->ml->guest + i * PAGE, PAGE, 0);
		i = next_page(r, i);
	}
	return NULL;
}

/* Loads every page as soon as it is armed. */
static void *load_loop(void *arg)
{
	struct race *r = arg;
	int i = 0;

	while (!r->stop) {
		ml_load(r->ml, r->ml->guest + i * PAGE, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL);
		i = next_page(r, i);
	}
	return NULL;
}

static void *stats_loop(void *arg)
{
	struct race *r = arg;
	struct muserload_stats st;

	while (!r->stop)
		if (!ml_stats(r->ml, &st) && st.unloaded > r->worst)
			r->worst = st.unloaded;
	return NULL;
}

/*
 * The count of pages armed and not loaded never wraps below zero: an arm
 * counted its pages in after it let loads in, so a load racing it counted one
 * out first and STATS could see 2^64 - n (found by the fuzzer). More threads
 * than CPUs, so that an arm is now and then preempted in that window.
 */
TEST_F_TIMEOUT(obj, unloaded_never_wraps, 60)
{
	void *(*loops[])(void *) = { arm_loop, arm_loop, load_loop, load_loop,
				     stats_loop, stats_loop };
	struct race r = { .ml = &self->ml };
	pthread_t t[6];
	int i;

	for (i = 0; i < 6; i++)
		ASSERT_EQ(0, pthread_create(&t[i], NULL, loops[i], &r));
	sleep(8);
	r.stop = 1;
	for (i = 0; i < 6; i++)
		pthread_join(t[i], NULL);
	EXPECT_GE(GUEST_PAGES, r.worst);
}

/*
 * STATS counts every taking of a page's lock, the time it was held, and the
 * takings that found it held by another thread, with the time they waited:
 * alone, an arm and a load of one page take it once each, hold it a while and
 * never wait; arm and load loops on that page in more threads than CPUs find
 * it held.
 */
TEST_F_TIMEOUT(obj, pages_lock_contention_counted, 60)
{
	void *(*loops[])(void *) = { arm_loop, arm_loop, load_loop, load_loop };
	struct race r = { .ml = &self->ml, .pages = 1 };
	struct muserload_stats before, after;
	pthread_t t[4];
	int i, tries;

	ASSERT_EQ(0, ml_stats(&self->ml, &before));
	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, PAGE, 0));
	ASSERT_EQ(0, ml_load(&self->ml, self->ml.guest, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL));
	ASSERT_EQ(0, ml_stats(&self->ml, &after));
	EXPECT_EQ(before.pages_lock_taken + 2, after.pages_lock_taken);
	EXPECT_EQ(0, after.pages_lock_contended);
	EXPECT_EQ(0, after.pages_lock_wait_ns);
	EXPECT_LT(before.pages_lock_held_ns, after.pages_lock_held_ns);

	for (i = 0; i < 4; i++)
		ASSERT_EQ(0, pthread_create(&t[i], NULL, loops[i], &r));
	/* Until a taking found it held: at most 20 s. */
	for (tries = 0; tries < 200 && !after.pages_lock_contended; tries++) {
		usleep(100000);
		ASSERT_EQ(0, ml_stats(&self->ml, &after));
	}
	r.stop = 1;
	for (i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	ASSERT_EQ(0, ml_stats(&self->ml, &after));
	EXPECT_LT(0, after.pages_lock_contended);
	EXPECT_LT(0, after.pages_lock_wait_ns);
	EXPECT_LE(after.pages_lock_contended, after.pages_lock_taken);
}

TEST_HARNESS_MAIN
