// SPDX-License-Identifier: GPL-2.0
/*
 * Signal mode, the 2011 proposal's own: a thread touching an unloaded page gets
 * the configured signal with si_addr the faulting address; its handler loads
 * the page and the access is retried, once. A kernel-mode access fails with
 * EFAULT, or with MUSERLOAD_ARM_KERNEL_WAITS waits for an event's load.
 */
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 16

static struct ml *sig_ml;
static volatile void *sig_addr;
static volatile int sig_code, sig_count;

static void load_handler(int sig, siginfo_t *info, void *uc)
{
	char *page = (char *)((uintptr_t)info->si_addr & ~(PAGE - 1));

	sig_addr = info->si_addr;
	sig_code = info->si_code;
	sig_count++;
	/* ml_load is one ioctl: async-signal-safe. */
	ml_load(sig_ml, page, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL);
}

static void install(int sig, void (*fn)(int, siginfo_t *, void *))
{
	struct sigaction sa = { .sa_sigaction = fn, .sa_flags = SA_SIGINFO };

	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

FIXTURE(sig)
{
	struct ml ml;
};

FIXTURE_SETUP(sig)
{
	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, 0));
	sig_ml = &self->ml;
	sig_addr = NULL;
	sig_count = 0;
}

FIXTURE_TEARDOWN(sig)
{
	ml_close(&self->ml);
}

static void check_signal(struct __test_metadata *_metadata, struct ml *ml, int sig)
{
	struct muserload_stats st;
	char *target = ml->guest + 3 * PAGE + 123;

	install(sig, load_handler);
	ASSERT_EQ(0, ml_arm(ml, ml->guest, GUEST_PAGES * PAGE, sig));
	/* volatile: the store must happen here, before the checks read the counters. */
	*(volatile char *)target = 42;
	/* Exactly one signal, at the exact address; the retried write landed. */
	EXPECT_EQ(1, sig_count);
	EXPECT_EQ(target, sig_addr);
	EXPECT_EQ(MUSERLOAD_SI_CODE, sig_code);
	EXPECT_EQ(42, *target);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_signal_user);
	EXPECT_EQ(1, st.loads_zero);
	EXPECT_EQ(GUEST_PAGES - 1, st.unloaded);
	signal(sig, SIG_DFL);
}

TEST_F(sig, sigbus) { check_signal(_metadata, &self->ml, SIGBUS); }
TEST_F(sig, sigusr1) { check_signal(_metadata, &self->ml, SIGUSR1); }
TEST_F(sig, sigrtmin) { check_signal(_metadata, &self->ml, SIGRTMIN + 2); }

/* A blocked or ignored signal would make the thread fault forever: SIGBUS instead. */
static void expect_sigbus_child(struct __test_metadata *_metadata, struct ml *ml,
				void (*prepare)(void))
{
	int status;
	pid_t pid = fork();

	ASSERT_LE(0, pid);
	if (pid == 0) {
		prepare();
		(void)*(volatile char *)ml->guest;
		_exit(0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGBUS, WTERMSIG(status));
}

static void block_usr1(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigprocmask(SIG_BLOCK, &set, NULL);
}

static void ignore_usr1(void)
{
	signal(SIGUSR1, SIG_IGN);
}

TEST_F(sig, blocked_or_ignored)
{
	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, PAGE, SIGUSR1));
	expect_sigbus_child(_metadata, &self->ml, block_usr1);
	expect_sigbus_child(_metadata, &self->ml, ignore_usr1);
}

/*
 * A kernel-mode access (read() into an unloaded page): the system call fails with
 * EFAULT and the handler runs on its return; a second read succeeds.
 */
TEST_F(sig, kernel_mode_access)
{
	struct ml *ml = &self->ml;
	struct muserload_stats st;
	char buf[32];
	int p[2];

	install(SIGUSR1, load_handler);
	ASSERT_EQ(0, ml_arm(ml, ml->guest, PAGE, SIGUSR1));
	ASSERT_EQ(0, pipe(p));
	memset(buf, 0x33, sizeof(buf));
	ASSERT_EQ(sizeof(buf), write(p[1], buf, sizeof(buf)));
	EXPECT_EQ(-1, read(p[0], ml->guest + 8, sizeof(buf)));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(1, sig_count);
	EXPECT_EQ(ml->guest + 8, sig_addr);
	EXPECT_EQ(sizeof(buf), read(p[0], ml->guest + 8, sizeof(buf)));
	EXPECT_EQ(0, memcmp(ml->guest + 8, buf, sizeof(buf)));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_signal_kernel);
	close(p[0]);
	close(p[1]);
	signal(SIGUSR1, SIG_DFL);
}

static void count_handler(int sig, siginfo_t *info, void *uc)
{
	sig_addr = info->si_addr;
	sig_count++;
}

struct event_loader {
	pthread_t thread;
	struct ml *ml;
	int events;
	struct muserload_event ev;
};

/* Reads one event and loads its page with zeros. */
static void *event_loader_main(void *arg)
{
	struct event_loader *l = arg;

	if (read(l->events, &l->ev, sizeof(l->ev)) == sizeof(l->ev))
		ml_load(l->ml, l->ml->guest + l->ev.offset, NULL, PAGE,
			MUSERLOAD_LOAD_ZERO, NULL);
	return NULL;
}

/*
 * MUSERLOAD_ARM_KERNEL_WAITS: the same read() gets its signal, then waits for
 * the page as in queue mode (an event, a load by another thread) and succeeds;
 * the handler runs on its return.
 */
TEST_F(sig, kernel_access_waits)
{
	struct ml *ml = &self->ml;
	struct event_loader l = { .ml = ml };
	struct muserload_arm arm = {
		.start = (uintptr_t)ml->guest,
		.len = PAGE,
		.signal = SIGUSR1,
		.flags = MUSERLOAD_ARM_KERNEL_WAITS,
	};
	struct muserload_stats st;
	char buf[32];
	int p[2];

	install(SIGUSR1, count_handler);
	l.events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, l.events);
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ARM, &arm));
	/* Unknown flags, and the flag in queue mode, are refused. */
	arm.flags = 2;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_ARM, &arm));
	EXPECT_EQ(EINVAL, errno);
	arm.flags = MUSERLOAD_ARM_KERNEL_WAITS;
	arm.signal = 0;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_ARM, &arm));
	EXPECT_EQ(EINVAL, errno);

	ASSERT_EQ(0, pthread_create(&l.thread, NULL, event_loader_main, &l));
	ASSERT_EQ(0, pipe(p));
	memset(buf, 0x33, sizeof(buf));
	ASSERT_EQ(sizeof(buf), write(p[1], buf, sizeof(buf)));
	EXPECT_EQ(sizeof(buf), read(p[0], ml->guest + 8, sizeof(buf)));
	EXPECT_EQ(0, memcmp(ml->guest + 8, buf, sizeof(buf)));
	ASSERT_EQ(0, pthread_join(l.thread, NULL));
	EXPECT_EQ(0, l.ev.offset);
	EXPECT_EQ(MUSERLOAD_EVENT_KERNEL | MUSERLOAD_EVENT_WRITE, l.ev.flags);
	EXPECT_EQ(1, sig_count);
	EXPECT_EQ(ml->guest + 8, sig_addr);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_signal_kernel);
	EXPECT_EQ(1, st.faults_queue_kernel);
	close(p[0]);
	close(p[1]);
	close(l.events);
	signal(SIGUSR1, SIG_DFL);
}

TEST_HARNESS_MAIN
