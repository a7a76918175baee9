// SPDX-License-Identifier: GPL-2.0
/*
 * Mappings and lifetimes: munmap (whole and partial), mremap, mprotect, closing
 * descriptors and exiting while threads wait.
 */
#include <signal.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 16

FIXTURE(life)
{
	struct ml ml;
};

FIXTURE_SETUP(life)
{
	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, 0));
}

FIXTURE_TEARDOWN(life)
{
	ml_close(&self->ml);
}

/* Runs @fn in a child and returns its wait status. */
static int in_child(void (*fn)(struct ml *), struct ml *ml)
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		fn(ml);
		_exit(0);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return status;
}

TEST_F(life, munmap_partial)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(8)));

	ASSERT_EQ(0, ml_arm(ml, ml->guest, GUEST_PAGES * PAGE, 0));
	ASSERT_EQ(0, munmap(ml->guest + 4 * PAGE, 2 * PAGE));
	/* The hole is no mapping of the object any more; both sides still are. */
	EXPECT_EQ(-EFAULT, ml_arm(ml, ml->guest + 4 * PAGE, PAGE, 0));
	EXPECT_EQ(-EFAULT, ml_load(ml, ml->guest, NULL, 8 * PAGE, MUSERLOAD_LOAD_ZERO, NULL));
	ml_fill(buf, 3);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 3 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ml_fill(buf, 6);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 6 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	EXPECT_TRUE(ml_check(ml->guest + 3 * PAGE, 3));
	EXPECT_TRUE(ml_check(ml->guest + 6 * PAGE, 6));
	/* Map the hole again: the object still has those pages unloaded. */
	ASSERT_EQ(ml->guest + 4 * PAGE,
		  mmap(ml->guest + 4 * PAGE, 2 * PAGE, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_FIXED, ml->fd, 4 * PAGE));
	ml_fill(buf, 4);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 4 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	EXPECT_TRUE(ml_check(ml->guest + 4 * PAGE, 4));
}

static struct ml *waiter_ml;

static void *touch_page2(void *arg)
{
	(void)*(volatile char *)(waiter_ml->guest + 2 * PAGE);
	return NULL;
}

/* The mapping goes while a thread waits in it: once woken, its access is a SIGSEGV. */
static void munmap_under_waiter(struct ml *ml)
{
	pthread_t t;
	char *again;

	waiter_ml = ml;
	pthread_create(&t, NULL, touch_page2, NULL);
	ml_wait_for_waiters(ml, 1);
	again = mmap(NULL, GUEST_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ml->fd, 0);
	munmap(ml->guest, GUEST_PAGES * PAGE);
	ml_load(ml, again + 2 * PAGE, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL);
	pthread_join(t, NULL);
}

TEST_F(life, munmap_while_waiting)
{
	int status;

	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, GUEST_PAGES * PAGE, 0));
	status = in_child(munmap_under_waiter, &self->ml);
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGSEGV, WTERMSIG(status));
}

TEST_F(life, mremap_move)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(8)));
	char *moved, *hint;

	ml_fill(ml->guest, 1);
	ASSERT_EQ(0, ml_arm(ml, ml->guest + PAGE, PAGE, 0));
	hint = mmap(NULL, GUEST_PAGES * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, hint);
	moved = mremap(ml->guest, GUEST_PAGES * PAGE, GUEST_PAGES * PAGE,
		       MREMAP_MAYMOVE | MREMAP_FIXED, hint);
	ASSERT_EQ(hint, moved);
	EXPECT_EQ(-EFAULT, ml_arm(ml, ml->guest, PAGE, 0));
	ml->guest = moved;
	EXPECT_TRUE(ml_check(moved, 1));
	ml_fill(buf, 2);
	ASSERT_EQ(0, ml_load(ml, moved + PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	EXPECT_TRUE(ml_check(moved + PAGE, 2));
}

/* Growing a mapping past what was mapped is refused (VM_DONTEXPAND). */
TEST_F(life, mremap_grow_refused)
{
	struct ml *ml = &self->ml;
	char *small = mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, ml->fd, 0);

	ASSERT_NE(MAP_FAILED, small);
	EXPECT_EQ(MAP_FAILED, mremap(small, 2 * PAGE, 4 * PAGE, MREMAP_MAYMOVE));
	EXPECT_EQ(EFAULT, errno);
	munmap(small, 2 * PAGE);
}

static void write_page0(struct ml *ml)
{
	*(volatile char *)ml->guest = 1;
}

TEST_F(life, mprotect)
{
	struct ml *ml = &self->ml;
	int status;

	ml_fill(ml->guest, 9);
	ASSERT_EQ(0, mprotect(ml->guest, PAGE, PROT_READ));
	EXPECT_TRUE(ml_check(ml->guest, 9));
	status = in_child(write_page0, ml);
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGSEGV, WTERMSIG(status));
	ASSERT_EQ(0, mprotect(ml->guest, PAGE, PROT_READ | PROT_WRITE));
	write_page0(ml);
	EXPECT_EQ(1, ml->guest[0]);
}

/* The object lives as long as a mapping does, descriptor or not. */
TEST_F(life, close_fd_keeps_mapping)
{
	struct ml *ml = &self->ml;

	ml_fill(ml->guest + PAGE, 4);
	ASSERT_EQ(0, close(ml->fd));
	ml->fd = -1;
	EXPECT_TRUE(ml_check(ml->guest + PAGE, 4));
	EXPECT_TRUE(ml_is_zero(ml->guest + 2 * PAGE));
}

/*
 * Closing the object's descriptor while threads wait leaves them waiting; closing the
 * events descriptor (the resolver) then ends their wait with SIGBUS.
 */
static void close_under_waiter(struct ml *ml)
{
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	pthread_t t;

	waiter_ml = ml;
	pthread_create(&t, NULL, touch_page2, NULL);
	ml_wait_for_waiters(ml, 1);
	close(ml->fd);
	usleep(50000);
	close(events);
	pthread_join(t, NULL);
}

TEST_F(life, close_while_waiting)
{
	int status;

	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, GUEST_PAGES * PAGE, 0));
	status = in_child(close_under_waiter, &self->ml);
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGBUS, WTERMSIG(status));
}

/* A process may exit while one of its threads waits. */
static void exit_under_waiter(struct ml *ml)
{
	pthread_t t;

	waiter_ml = ml;
	pthread_create(&t, NULL, touch_page2, NULL);
	ml_wait_for_waiters(ml, 1);
	_exit(7);
}

TEST_F(life, exit_while_waiting)
{
	struct muserload_stats st;
	int status;

	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, GUEST_PAGES * PAGE, 0));
	status = in_child(exit_under_waiter, &self->ml);
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(7, WEXITSTATUS(status));
	ASSERT_EQ(0, ml_stats(&self->ml, &st));
	EXPECT_EQ(0, st.waiters);
	EXPECT_EQ(1, st.fault_waits);
}

TEST_HARNESS_MAIN
