// SPDX-License-Identifier: GPL-2.0
/*
 * The module's lifetime: removing it is refused while any object exists, held
 * by a descriptor, a mapping, an events descriptor or a thread waiting in a
 * fault; and it loads and unloads a thousand times, used each time, without
 * a leak (kmemleak checks after the suite) or a splat.
 *
 * Unloads and reloads the module: the path of the .ko is MUSERLOAD_KO, by
 * default /lib/muserload.ko (where the test guest keeps it). The module is
 * loaded again at the end, whatever happened.
 */
#include <stdlib.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define CYCLES 1000

static const char *ko_path(void)
{
	const char *path = getenv("MUSERLOAD_KO");

	return path ? path : "/lib/muserload.ko";
}

static int delete_module(void)
{
	return syscall(SYS_delete_module, "muserload", O_NONBLOCK) ? -errno : 0;
}

/*
 * Unloads, waiting a little for an object just closed: its last reference may
 * still be held by a page pool refill on the module's workqueue.
 */
static int unload(void)
{
	int i, ret = -EWOULDBLOCK;

	for (i = 0; i < 1000 && ret == -EWOULDBLOCK; i++) {
		ret = delete_module();
		if (ret == -EWOULDBLOCK)
			usleep(1000);
	}
	return ret;
}

static int load(void)
{
	int fd = open(ko_path(), O_RDONLY | O_CLOEXEC), ret;

	if (fd < 0)
		return -errno;
	ret = syscall(SYS_finit_module, fd, "", 0) ? -errno : 0;
	close(fd);
	return ret;
}

static int loaded(void)
{
	return access("/sys/module/muserload", F_OK) == 0;
}

FIXTURE(mod)
{
	struct ml ml;
};

FIXTURE_SETUP(mod)
{
	if (access(ko_path(), R_OK))
		SKIP(return, "no %s (set MUSERLOAD_KO)", ko_path());
	ASSERT_TRUE(loaded());
	ASSERT_EQ(0, ml_open(&self->ml, 4 * PAGE, 4 * PAGE));
}

FIXTURE_TEARDOWN(mod)
{
	ml_close(&self->ml);
	if (!loaded())
		load();
}

/* Each holder alone keeps the object, and so the module. */
TEST_F(mod, removal_refused_while_an_object_exists)
{
	struct ml *ml = &self->ml;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);

	ASSERT_LE(0, events);
	EXPECT_EQ(-EWOULDBLOCK, delete_module());
	/* Mappings and the events descriptor, no object descriptor. */
	close(ml->fd);
	ml->fd = -1;
	EXPECT_EQ(-EWOULDBLOCK, delete_module());
	/* The events descriptor alone. */
	munmap(ml->guest, ml->size);
	munmap(ml->staging, ml->staging_size);
	ml->guest = ml->staging = NULL;
	EXPECT_EQ(-EWOULDBLOCK, delete_module());
	close(events);
	EXPECT_EQ(0, unload());
	EXPECT_EQ(0, load());
}

static struct ml *waiting_ml;

static void *touch_page(void *arg)
{
	(void)*(volatile char *)waiting_ml->guest;
	return NULL;
}

/*
 * A thread waits in a fault (queue mode, no events descriptor: nothing ends
 * the wait) of an object whose descriptors and mappings everyone else gave
 * up: the sleeper alone holds it, and so the module.
 */
TEST_F(mod, removal_refused_while_a_thread_waits)
{
	struct ml *ml = &self->ml;
	int status, ready[2];
	pid_t pid;
	char c;

	ASSERT_EQ(0, ml_arm(ml, ml->guest, PAGE, 0));
	ASSERT_EQ(0, pipe(ready));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		pthread_t t;

		waiting_ml = ml;
		pthread_create(&t, NULL, touch_page, NULL);
		if (ml_wait_for_waiters(ml, 1) != 1)
			_exit(1);
		munmap(ml->staging, ml->staging_size);
		close(ml->fd);
		if (write(ready[1], "r", 1) != 1)
			_exit(2);
		pause();
		_exit(3);
	}
	ASSERT_EQ(1, read(ready[0], &c, 1));
	ml_close(ml);
	ml->fd = -1;
	ml->guest = ml->staging = NULL;
	/* Its own mapping of guest memory is the child's last link: the waiter is in it. */
	EXPECT_EQ(-EWOULDBLOCK, delete_module());
	kill(pid, SIGKILL);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGKILL, WTERMSIG(status));
	EXPECT_EQ(0, unload());
	EXPECT_EQ(0, load());
	close(ready[0]);
	close(ready[1]);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Load, use, unload, a thousand times: minutes under KASAN and TCG, 330 s with another
 * guest sharing the host (vm/guest/run-tests gives each program 600 s).
 */
TEST_F_TIMEOUT(mod, load_unload_cycles, 560)
{
	char buf[PAGE] __attribute__((aligned(8)));
	double t, t_unload = 0, t_load = 0, t_use = 0;
	struct ml ml;
	int i;

	ml_close(&self->ml);
	self->ml.fd = -1;
	self->ml.guest = self->ml.staging = NULL;
	ml_fill(buf, 5);
	for (i = 0; i < CYCLES; i++) {
		t = now();
		ASSERT_EQ(0, unload()) TH_LOG("cycle %d", i);
		t_unload += now() - t;
		ASSERT_FALSE(loaded());
		t = now();
		ASSERT_EQ(0, load()) TH_LOG("cycle %d", i);
		t_load += now() - t;
		t = now();
		ASSERT_EQ(0, ml_open(&ml, 4 * PAGE, 4 * PAGE)) TH_LOG("cycle %d", i);
		ASSERT_EQ(0, ml_arm(&ml, ml.guest, 4 * PAGE, 0));
		ASSERT_EQ(0, ml_load(&ml, ml.guest, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
		ml_fill(ml.staging, 6);
		ASSERT_EQ(0, ml_load(&ml, ml.guest + PAGE, ml.staging, PAGE,
				     MUSERLOAD_LOAD_MOVE, NULL));
		ASSERT_TRUE(ml_check(ml.guest, 5));
		ASSERT_TRUE(ml_check(ml.guest + PAGE, 6));
		ml_close(&ml);
		t_use += now() - t;
		if (i % 100 == 99)
			TH_LOG("%d cycles: unload %.1f s, load %.1f s, use %.1f s", i + 1,
			       t_unload, t_load, t_use);
	}
}

TEST_HARNESS_MAIN
