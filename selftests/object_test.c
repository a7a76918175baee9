// SPDX-License-Identifier: GPL-2.0
/*
 * The object: setup, mappings, zero fill, arming and discard, and the errno of
 * every bad setup, mmap and arm.
 */
#include <signal.h>
#include <time.h>
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
};

/* Arms one page at a time, round the object: many arms, each one short. */
static void *arm_loop(void *arg)
{
	struct race *r = arg;
	int i = 0;

	while (!r->stop) {
		ml_arm(r->ml, r->ml->guest + i * PAGE, PAGE, 0);
		i = (i + 1) % GUEST_PAGES;
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
		i = (i + 1) % GUEST_PAGES;
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

TEST_HARNESS_MAIN
