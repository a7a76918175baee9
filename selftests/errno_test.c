// SPDX-License-Identifier: GPL-2.0
/*
 * Every errno row of every errno table of Documentation/muserload.rst gets a test that
 * produces it. This file has the rows and cases no other selftest produced, or produced
 * only if an injected failure happened to land: each test checks the exact errno, and
 * that the failed call changed nothing the document says it does not change (the stats,
 * the pages and staging pages, the queued events, whether the object is set up or has
 * an events descriptor).
 *
 * The audit: every row, a line per case, then the tests that produce it, as file:test
 * (the name -t selects; "errno" is this file). D1-D6: where the module and the document
 * disagree, at the end of this comment.
 *
 * Ioctls, every ioctl:
 *   ENOTTY unknown number         api_test:unknown_ioctl; errno:unknown_numbers
 *   EFAULT arg unreadable: API    api_test:bad_pointer
 *          SETUP                  object_test:setup_bad_input
 *          ARM                    object_test:arm_bad_input
 *          LOAD                   load_test:bad_input
 *          LOADV, RESOLVE, STATS  errno:unreadable_arguments
 *   EFAULT arg unwritable: API,   errno:read_only_arguments
 *          STATS
 *          LOAD, LOADV, RESOLVE   errno:read_only_arguments (the errno);
 *                                 errno:read_only_argument_changes_nothing
 *   EINVAL flags not 0: SETUP     object_test:setup_bad_input
 *          ARM                    object_test:arm_bad_input; signal_test:kernel_access_waits
 *          LOAD, LOADV mode       load_test:bad_input; errno:loadv_bad_mode
 *          RESOLVE                queue_test:resolve_rules
 *          EVENTS                 queue_test:bad_event_flags; errno:events_bad_flags
 * MUSERLOAD_IOC_API:
 *   EINVAL api                    api_test:unsupported_version
 *   EINVAL features               api_test:unknown_feature
 * MUSERLOAD_IOC_SETUP:
 *   EINVAL size 0, not a page multiple, over STAGING_OFFSET; staging_size not a page
 *          multiple, over STAGING_MAX; flags       object_test:setup_bad_input
 *   EBUSY                         object_test:setup_bad_input; errno:setup_twice
 *   ENOMEM, stays not set up      isolation_test:memcg_limit_fails_loads (the errno);
 *                                 fault_injection_test:setup_ioctl (if injected);
 *                                 errno:setup_past_memcg_limit
 *   EINTR, stays not set up       errno:setup_killed (seen by a ptracer, D5)
 *   EINVAL before SETUP: mmap     isolation_test:reopen_is_a_new_object; errno:not_set_up
 *          ARM, the loads         errno:not_set_up
 * mmap:
 *   EINVAL not set up             isolation_test:reopen_is_a_new_object; errno:not_set_up
 *   EINVAL not MAP_SHARED         object_test:mmap_bad_input
 *   EINVAL not wholly in guest memory or in staging        object_test:mmap_bad_input
 *   ENOMEM                        fault_injection_test:mmap (if injected); errno:mmap_enomem
 * MUSERLOAD_IOC_ARM:
 *   EINVAL start or len not aligned, len 0, wrap           object_test:arm_bad_input
 *   EINVAL unknown flag, a flag in queue mode              object_test:arm_bad_input;
 *                                                          signal_test:kernel_access_waits
 *   EINVAL staging                object_test:arm_bad_input
 *   EINVAL SIGKILL, SIGSTOP, over SIGRTMAX                 object_test:arm_bad_input
 *   EINVAL not set up             errno:not_set_up
 *   EFAULT                        object_test:arm_bad_input, objects_are_separate;
 *                                 lifecycle_test:munmap_partial, mremap_move;
 *                                 isolation_test:other_process_names_nothing
 *   (no ENOMEM: ARM allocates nothing; the row was dropped, D1)
 * MUSERLOAD_IOC_LOAD and MUSERLOAD_IOC_LOADV:
 *   EINVAL unknown kind or flag   load_test:bad_input (LOAD); errno:loadv_bad_mode (LOADV)
 *   EINVAL count 0, over LOADV_MAX                         load_test:vectored
 *   EINVAL dst, MOVE src or len not aligned, len 0, wrap, ZERO or WAKE src not 0:
 *          nothing loaded         load_test:bad_input, copy_bad_shape,
 *                                 vectored_bad_shape_loads_nothing
 *   EINVAL dst in staging         load_test:bad_input, vectored_bad_shape_loads_nothing
 *   EINVAL MOVE src in guest memory                        load_test:bad_input (LOAD);
 *                                 errno:loadv_move_src_in_guest (the pairs before it)
 *   EINVAL not set up             errno:not_set_up
 *   EFAULT dst or MOVE src        load_test:bad_input; lifecycle_test:munmap_partial;
 *                                 isolation_test:other_process_names_nothing
 *   EFAULT COPY source            load_test:bad_input, copy_partial_efault
 *   EFAULT vec                    load_test:vectored; errno:unreadable_arguments
 *   EEXIST                        load_test:eexist_keeps_staging, eexist_wakes, vectored,
 *                                 vectored_batch, copy_and_zero_ranges, unarmed_pages
 *   ENOMEM LOAD                   isolation_test:memcg_limit_fails_loads (COPY, MOVE);
 *                                 fault_injection_test:copy, move (if injected)
 *   ENOMEM LOADV                  fault_injection_test:loadv (if injected); errno:loadv_enomem
 * MUSERLOAD_IOC_EVENTS and read():
 *   EINVAL unknown flag           queue_test:bad_event_flags; errno:events_bad_flags
 *   EINVAL buffer under a record  queue_test:read_rules; errno:read_small_buffer
 *   EBUSY                         queue_test:event_then_load
 *   ENOMEM                        fault_injection_test:events (if injected);
 *                                 errno:events_enomem
 *   EMFILE                        errno:events_emfile
 *   EAGAIN                        queue_test:read_rules, remote_access,
 *                                 readers_beside_a_sleeper; errno:read_eagain_fcntl
 *   EFAULT read                   queue_test:event_then_load
 *   EINTR  no SA_RESTART          errno:read_eintr
 *          SA_RESTART: restarts   errno:read_restarts
 *   (0)    end of file            queue_test:read_rules; errno:read_eof_after_events
 * MUSERLOAD_IOC_RESOLVE:
 *   EINVAL flags, nr_events 0, load.count over LOADV_MAX, load.mode
 *                                 queue_test:resolve_rules
 *   EINVAL a pair's shape         queue_test:resolve_bad_shape_loads_nothing
 *   EINVAL a pair's region, stops as EEXIST                errno:resolve_load_errors
 *   EEXIST                        queue_test:resolve_rules
 *   EEXIST row: a load's EFAULT   errno:resolve_load_errors
 *          a load's ENOMEM        errno:resolve_enomem
 *          a load's region EINVAL errno:resolve_load_errors
 *   EFAULT as for LOADV           errno:resolve_load_errors, unreadable_arguments
 *          events not writable   queue_test:resolve_rules
 *   EINTR  after loads            queue_test:resolve_interrupted_after_loads
 *          no loads, no SA_RESTART                         queue_test:readers_beside_a_sleeper
 *          no loads, SA_RESTART: restarted                 errno:resolve_restarts
 * MUSERLOAD_IOC_STATS, the general rule only:
 *   EFAULT                        errno:unreadable_arguments, read_only_arguments
 * MUSERLOAD_IOC_ABORT: no errno.
 *
 * Where the module and the document disagreed when this file was written, and what
 * changed:
 * D1. ARM's ENOMEM: ARM allocates nothing (a discard, state words, an
 *     unmap_mapping_range()), so nothing produced it: the row is gone from the document.
 * D2. An argument that could be read but not written back: LOAD, LOADV and RESOLVE did
 *     their loads (a MOVE emptied its staging page) and RESOLVE took its events off the
 *     queue, and only then failed with EFAULT writing the struct back. The module now
 *     checks that the argument can be written back before it does anything.
 * D3. RESOLVE without loads, interrupted by a signal whose handler has SA_RESTART (or
 *     restarted with no handler: SIGSTOP then SIGCONT, the freezer) wrote nr_events 0
 *     back before returning -ERESTARTSYS, so the restarted call failed with EINVAL. The
 *     module no longer writes back a call that restarts.
 * D4. EVENTS can fail with ENFILE (fs.file-max reached by a user without
 *     CAP_SYS_ADMIN): the document lists it now; no test (a system-wide limit).
 * D5. SETUP's EINTR goes to a caller that is being killed, which only a ptracer sees; a
 *     kill during the arrays' vmalloc() fails SETUP with ENOMEM instead. As documented.
 * D6. Before SETUP a COPY from an unreadable source, and a LOADV of an unreadable vec,
 *     failed with EFAULT, not the documented EINVAL: the module now checks that the
 *     object is set up before it reads either.
 */
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 16
#define STAGING_PAGES 4
/* Page 0 holds this pattern: a witness that no failed call reached a present page. */
#define WITNESS 1000
/* No call of the module makes this many allocations (as in fault_injection_test). */
#define MAX_NTH 300

/*
 * The object every test starts from: GUEST_PAGES of guest memory and STAGING_PAGES of
 * staging, mapped; page 0 present (WITNESS), every other guest page armed, queue mode.
 * The guest mapping's page tables are made first: a load allocates nothing but pages.
 */
static void open_object(struct __test_metadata *_metadata, struct ml *ml)
{
	ASSERT_EQ(0, ml_open(ml, GUEST_PAGES * PAGE, STAGING_PAGES * PAGE));
	ml_fill(ml->guest, WITNESS);
	/* The mapping may straddle a 2 MiB boundary: its last page's table too. */
	ml->guest[(GUEST_PAGES - 1) * PAGE] = 1;
	ASSERT_EQ(0, ml_arm(ml, ml->guest + PAGE, (GUEST_PAGES - 1) * PAGE, 0));
}

static void close_object(struct ml *ml, int events, pid_t toucher)
{
	if (toucher > 0) {
		kill(toucher, SIGKILL);
		waitpid(toucher, NULL, 0);
	}
	if (events >= 0)
		close(events);
	ml_close(ml);
}

static struct muserload_stats stats(struct __test_metadata *_metadata, struct ml *ml)
{
	struct muserload_stats st = { 0 };

	ASSERT_EQ(0, ml_stats(ml, &st));
	return st;
}

/*
 * Whether @a and @b are the same snapshot: nothing counted in between. The
 * page locks' counters, last in the struct, are left out: they count every
 * taking of a page's lock, a failed call's too, and change nothing else.
 */
static int same_stats(const struct muserload_stats *a, const struct muserload_stats *b)
{
	return !memcmp(a, b, offsetof(struct muserload_stats, pages_lock_taken));
}

/* Whether the events descriptor @events has an event queued, without taking it. */
static int queued(int events)
{
	struct pollfd pfd = { .fd = events, .events = POLLIN };

	return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN);
}

/* Waits up to @seconds for @pid to end; returns its wait status, -1 if it had to be killed. */
static int reap(pid_t pid, int seconds)
{
	int status, i;

	for (i = 0; i < seconds * 100; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return status;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

/*
 * Forks a process that reads guest page @page (and exits 0 once it has it), and returns
 * once it waits for it: its event is queued. *@toucher is set first, for the teardown.
 */
static void start_toucher(struct __test_metadata *_metadata, struct ml *ml, int events,
			  pid_t *toucher, int page)
{
	struct muserload_stats st = stats(_metadata, ml);
	__u64 waiters = st.waiters;
	int i;

	*toucher = fork();
	ASSERT_LE(0, *toucher);
	if (*toucher == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		/* Not a resolver: closing the test's descriptor must abort the object. */
		if (events >= 0)
			close(events);
		(void)*(volatile char *)(ml->guest + page * PAGE);
		_exit(0);
	}
	for (i = 0; i < 500 && st.waiters == waiters; i++) {
		usleep(10000);
		st = stats(_metadata, ml);
	}
	ASSERT_LT(waiters, st.waiters) TH_LOG("the toucher of page %d does not wait", page);
}

/* Loads the toucher's page (zeros, if no test loaded it); the toucher then exits 0. */
static void finish_toucher(struct __test_metadata *_metadata, struct ml *ml, pid_t *toucher,
			   int page)
{
	int ret = ml_load(ml, ml->guest + page * PAGE, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL);
	int status;

	EXPECT_TRUE(ret == 0 || ret == -EEXIST);
	status = reap(*toucher, 5);
	*toucher = 0;
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
		TH_LOG("the toucher of page %d: status %#x", page, status);
}

/*
 * Whether guest page @page is loaded, found without touching it: a ZERO load of a loaded
 * page fails with EEXIST; of an armed one it succeeds (and loads it).
 */
static int was_loaded(struct ml *ml, int page)
{
	return ml_load(ml, ml->guest + page * PAGE, NULL, PAGE, MUSERLOAD_LOAD_ZERO,
		       NULL) == -EEXIST;
}

/* A page of memory holding @len bytes of @data, then made read-only. */
static void *read_only_copy(const void *data, size_t len)
{
	char *page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);

	if (page == MAP_FAILED)
		return NULL;
	memcpy(page, data, len);
	if (mprotect(page, PAGE, PROT_READ)) {
		munmap(page, PAGE);
		return NULL;
	}
	return page;
}

/* A page that cannot be read. */
static void *unreadable_page(void)
{
	void *page = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return page == MAP_FAILED ? NULL : page;
}

/* Makes the memory cgroup @path with memory.max @max (NULL: no limit). */
static int make_cgroup(const char *path, const char *max)
{
	char file[128];

	if (ml_write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory"))
		return -1;
	if (mkdir(path, 0755) && errno != EEXIST)
		return -1;
	snprintf(file, sizeof(file), "%s/memory.max", path);
	return max ? ml_write_file(file, max) : 0;
}

/* Moves process @pid into the cgroup @path. */
static int join_cgroup(const char *path, pid_t pid)
{
	char file[128], text[32];

	snprintf(file, sizeof(file), "%s/cgroup.procs", path);
	snprintf(text, sizeof(text), "%d", pid);
	return ml_write_file(file, text);
}

/* A read() of the events descriptor, or a RESOLVE that only reads, in a thread. */
struct blocked {
	struct ml *ml;
	int events;		/* read() this; -1: RESOLVE */
	pthread_t thread;
	volatile pid_t tid;
	int done;
	int err;		/* 0, or the call's errno */
	long got;		/* read(): bytes; RESOLVE: nr_events */
	struct muserload_event ev[4];
};

static void *blocked_main(void *arg)
{
	struct blocked *b = arg;
	struct muserload_resolve res = {
		.events = (uintptr_t)b->ev,
		.nr_events = ARRAY_SIZE(b->ev),
	};
	ssize_t n;

	b->tid = syscall(SYS_gettid);
	if (b->events >= 0) {
		n = read(b->events, b->ev, sizeof(b->ev));
		b->err = n < 0 ? errno : 0;
		b->got = n;
	} else {
		b->err = ioctl(b->ml->fd, MUSERLOAD_IOC_RESOLVE, &res) ? errno : 0;
		b->got = res.nr_events;
	}
	__atomic_store_n(&b->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int blocked_done(struct blocked *b)
{
	return __atomic_load_n(&b->done, __ATOMIC_ACQUIRE);
}

/* The scheduler state of thread @tid ('R', 'S', ...), from /proc; 0 if unknown. */
static char thread_state(pid_t tid)
{
	char path[64], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

/* Waits up to 5 s for @b's call to sleep (seen asleep three times, 10 ms apart). */
static int blocked_asleep(struct blocked *b)
{
	int i, seen = 0;

	for (i = 0; i < 500 && !blocked_done(b); i++) {
		if (b->tid && thread_state(b->tid) == 'S')
			seen++;
		else
			seen = 0;
		if (seen == 3)
			return 1;
		usleep(10000);
	}
	return 0;
}

/* Waits up to 5 s for @b's call to end; returns whether it did. */
static int blocked_ended(struct blocked *b)
{
	int i;

	for (i = 0; i < 500 && !blocked_done(b); i++)
		usleep(10000);
	return blocked_done(b);
}

/* Ends @b's call if it still waits (ABORT: end of file, or no event) and joins it. */
static void blocked_join(struct blocked *b)
{
	if (!blocked_ended(b))
		ioctl(b->ml->fd, MUSERLOAD_IOC_ABORT);
	pthread_join(b->thread, NULL);
}

static volatile int signals;

static void count_signal(int sig)
{
	signals++;
}

/* SIGUSR2 runs count_signal(), with @flags (SA_RESTART, or 0). */
static void catch_usr2(int flags)
{
	struct sigaction sa = { .sa_handler = count_signal, .sa_flags = flags };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR2, &sa, NULL);
	signals = 0;
}

/* Starts @b's call, waits until it sleeps, and interrupts it: returns once the handler ran. */
static void interrupt_blocked(struct __test_metadata *_metadata, struct blocked *b)
{
	int i;

	ASSERT_EQ(0, pthread_create(&b->thread, NULL, blocked_main, b));
	ASSERT_TRUE(blocked_asleep(b)) TH_LOG("the call does not wait");
	ASSERT_EQ(0, pthread_kill(b->thread, SIGUSR2));
	for (i = 0; i < 500 && !signals; i++)
		usleep(10000);
	ASSERT_EQ(1, signals);
}

FIXTURE(errnos)
{
	struct ml ml;
	int events;
	pid_t toucher;
};

FIXTURE_SETUP(errnos)
{
	self->events = -1;
	self->toucher = 0;
	open_object(_metadata, &self->ml);
}

FIXTURE_TEARDOWN(errnos)
{
	close_object(&self->ml, self->events, self->toucher);
}

static int is_ours(unsigned long cmd)
{
	static const unsigned long ours[] = {
		MUSERLOAD_IOC_API, MUSERLOAD_IOC_SETUP, MUSERLOAD_IOC_ARM, MUSERLOAD_IOC_LOAD,
		MUSERLOAD_IOC_LOADV, MUSERLOAD_IOC_EVENTS, MUSERLOAD_IOC_ABORT,
		MUSERLOAD_IOC_STATS, MUSERLOAD_IOC_RESOLVE,
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(ours); i++)
		if (cmd == ours[i])
			return 1;
	return 0;
}

/*
 * Every number of type 0xBD, in every direction and with the size of every argument, that
 * is not one of the nine: ENOTTY, on the object and on its events descriptor (which has
 * no ioctl at all, so the nine too: its ABORT number aborts nothing). The argument is
 * neither read nor written, and the object is as it was.
 */
TEST_F(errnos, unknown_numbers)
{
	static const unsigned int dirs[] = {
		_IOC_NONE, _IOC_READ, _IOC_WRITE, _IOC_READ | _IOC_WRITE };
	static const unsigned int sizes[] = {
		0, 8, sizeof(struct muserload_api), sizeof(struct muserload_setup),
		sizeof(struct muserload_loadv), sizeof(struct muserload_load),
		sizeof(struct muserload_resolve), sizeof(struct muserload_stats) };
	struct ml *ml = &self->ml;
	struct muserload_stats before, after;
	unsigned char arg[512], sentinel[512];
	struct muserload_event ev;
	unsigned int nr, d, s, f, wrong = 0;
	unsigned long cmd;
	int fds[2];

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	fds[0] = ml->fd;
	fds[1] = self->events;
	memset(sentinel, 0xa5, sizeof(sentinel));
	memcpy(arg, sentinel, sizeof(arg));
	before = stats(_metadata, ml);
	for (f = 0; f < 2; f++)
		for (nr = 0; nr < 256; nr++)
			for (d = 0; d < ARRAY_SIZE(dirs); d++)
				for (s = 0; s < ARRAY_SIZE(sizes); s++) {
					cmd = _IOC(dirs[d], MUSERLOAD_IOCTL_BASE, nr, sizes[s]);
					if (f == 0 && is_ours(cmd))
						continue;
					errno = 0;
					if (ioctl(fds[f], cmd, arg) == -1 && errno == ENOTTY)
						continue;
					if (!wrong++)
						TH_LOG("%s: ioctl %#lx: %s", f ? "events" : "object",
						       cmd, strerror(errno));
				}
	EXPECT_EQ(0, wrong);
	EXPECT_EQ(0, memcmp(arg, sentinel, sizeof(arg)));
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
	EXPECT_TRUE(ml_check(ml->guest, WITNESS));
	/* Not aborted: the events descriptor is not at end of file. */
	EXPECT_EQ(-1, read(self->events, &ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);
}

/*
 * Arguments that cannot be read: EFAULT from LOADV, RESOLVE and STATS (API, SETUP, ARM and
 * LOAD have theirs elsewhere), and from a vectored load whose second pair cannot be read:
 * nothing loaded, not even the first pair, and no event taken.
 */
TEST_F(errnos, unreadable_arguments)
{
	struct ml *ml = &self->ml;
	void *none = unreadable_page(), *bad[2] = { NULL, none };
	char *two = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct muserload_resolve res = { .nr_events = 4, .flags = MUSERLOAD_RESOLVE_NONBLOCK };
	struct muserload_stats before, after;
	struct muserload_loadv lv = { 0 };
	struct muserload_vec *vec;
	struct muserload_event ev[4];
	int i;

	ASSERT_NE(NULL, none);
	ASSERT_NE(MAP_FAILED, two);
	ASSERT_EQ(0, mprotect(two + PAGE, PAGE, PROT_NONE));
	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 3);
	before = stats(_metadata, ml);

	for (i = 0; i < 2; i++) {
		EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, bad[i]));
		EXPECT_EQ(EFAULT, errno);
		EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, bad[i]));
		EXPECT_EQ(EFAULT, errno);
		EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_STATS, bad[i]));
		EXPECT_EQ(EFAULT, errno);
	}
	/* The pairs: the first readable, at the end of a page; the second past it. */
	vec = (struct muserload_vec *)(two + PAGE) - 1;
	*vec = (struct muserload_vec){ (uintptr_t)ml->guest + PAGE, 0, PAGE };
	lv = (struct muserload_loadv){ .vec = (uintptr_t)vec, .count = 2,
				       .mode = MUSERLOAD_LOAD_ZERO };
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(0, lv.loaded);
	res.load = lv;
	res.events = (uintptr_t)ev;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(0, res.load.loaded);

	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
	EXPECT_TRUE(queued(self->events));
	EXPECT_FALSE(was_loaded(ml, 1));
	EXPECT_TRUE(ml_check(ml->guest, WITNESS));
	/* The event is there, once. */
	ASSERT_EQ(sizeof(ev[0]), read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(3 * PAGE, ev[0].offset);
	finish_toucher(_metadata, ml, &self->toucher, 3);
	munmap(two, 2 * PAGE);
	munmap(none, PAGE);
}

/* Where the read-only arguments of read_only_arguments go in their page. */
struct read_only_args {
	struct muserload_api api;
	struct muserload_load load;
	struct muserload_loadv loadv;
	struct muserload_resolve resolve;
	struct muserload_vec vec;
	struct muserload_stats stats;
};

/*
 * Arguments that can be read but not written back: EFAULT from API, STATS, LOAD, LOADV and
 * RESOLVE. API and STATS change nothing. The loads may have happened (D2): whatever they
 * did, the page is loaded exactly if the stats count it, and the event RESOLVE read is
 * either still queued or in its buffer: nothing is lost.
 */
TEST_F(errnos, read_only_arguments)
{
	struct ml *ml = &self->ml;
	struct muserload_stats before, after;
	struct muserload_event ev[4];
	struct read_only_args *ro;

	ro = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, ro);
	ro->api = (struct muserload_api){ .api = MUSERLOAD_API };
	ro->load = (struct muserload_load){
		(uintptr_t)ml->guest + 2 * PAGE, 0, PAGE, MUSERLOAD_LOAD_ZERO };
	ro->vec = (struct muserload_vec){ (uintptr_t)ml->guest + 4 * PAGE, 0, PAGE };
	ro->loadv = (struct muserload_loadv){ (uintptr_t)&ro->vec, 1, MUSERLOAD_LOAD_ZERO };
	ro->resolve = (struct muserload_resolve){
		.events = (uintptr_t)ev,
		.nr_events = 4,
		.flags = MUSERLOAD_RESOLVE_NONBLOCK,
	};
	ASSERT_EQ(0, mprotect(ro, PAGE, PROT_READ));

	before = stats(_metadata, ml);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_API, &ro->api));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_STATS, &ro->stats));
	EXPECT_EQ(EFAULT, errno);
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));

	/* The argument is checked for writing first: nothing is loaded. */
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOAD, &ro->load));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &ro->loadv));
	EXPECT_EQ(EFAULT, errno);
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
	EXPECT_EQ(0, was_loaded(ml, 2));
	EXPECT_EQ(0, was_loaded(ml, 4));

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 6);
	memset(ev, 0xff, sizeof(ev));
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &ro->resolve));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_TRUE(queued(self->events)) TH_LOG("the event of page 6 was taken");
	finish_toucher(_metadata, ml, &self->toucher, 6);
	EXPECT_TRUE(ml_check(ml->guest, WITNESS));
	munmap(ro, PAGE);
}

/*
 * An object not set up: mmap, ARM and every load fail with EINVAL, and none of it counts
 * anything, writes anything or sets the object up: SETUP works afterwards, once.
 */
TEST_F(errnos, not_set_up)
{
	struct muserload_api api = { .api = MUSERLOAD_API };
	struct muserload_setup setup = { .size = 4 * PAGE };
	struct muserload_stats zero = { 0 }, st = { 0 };
	char buf[PAGE] __attribute__((aligned(PAGE)));
	char *anon = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
			  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct muserload_vec vec[2];
	struct muserload_loadv lv;
	struct muserload_resolve res;
	struct muserload_event ev;
	__u64 modes[] = { MUSERLOAD_LOAD_MOVE, MUSERLOAD_LOAD_COPY, MUSERLOAD_LOAD_ZERO,
			  MUSERLOAD_LOAD_WAKE };
	struct ml bare = { .size = 4 * PAGE };
	__u64 g, loaded;
	unsigned int i;
	char *p;

	ASSERT_NE(MAP_FAILED, anon);
	g = (uintptr_t)anon;
	ml_fill(anon, 5);
	ml_fill(buf, 6);
	bare.fd = open(MUSERLOAD_DEV, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, bare.fd);
	ASSERT_EQ(0, ioctl(bare.fd, MUSERLOAD_IOC_API, &api));

	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, bare.fd, 0));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, bare.fd,
				   MUSERLOAD_STAGING_OFFSET));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-EINVAL, ml_arm(&bare, anon, PAGE, 0));
	EXPECT_EQ(-EINVAL, ml_arm(&bare, anon, PAGE, SIGUSR1));
	for (i = 0; i < ARRAY_SIZE(modes); i++) {
		const void *src = modes[i] == MUSERLOAD_LOAD_MOVE ? anon + PAGE :
				  modes[i] == MUSERLOAD_LOAD_COPY ? buf : NULL;

		loaded = 1;
		EXPECT_EQ(-EINVAL, ml_load(&bare, anon, src, PAGE, modes[i], &loaded))
			TH_LOG("load kind %llu", (unsigned long long)modes[i]);
		EXPECT_EQ(0, loaded);
	}
	vec[0] = (struct muserload_vec){ g, (uintptr_t)buf, PAGE };
	vec[1] = (struct muserload_vec){ g + PAGE, (uintptr_t)buf, PAGE };
	lv = (struct muserload_loadv){ (uintptr_t)vec, 2, MUSERLOAD_LOAD_COPY, 1 };
	EXPECT_EQ(-1, ioctl(bare.fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(0, lv.loaded);
	res = (struct muserload_resolve){
		.load = { (uintptr_t)vec, 1, MUSERLOAD_LOAD_COPY, 1 },
		.events = (uintptr_t)&ev,
		.nr_events = 1,
		.flags = MUSERLOAD_RESOLVE_NONBLOCK,
	};
	EXPECT_EQ(-1, ioctl(bare.fd, MUSERLOAD_IOC_RESOLVE, &res));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(0, res.load.loaded);
	EXPECT_EQ(0, res.nr_events);

	ASSERT_EQ(0, ml_stats(&bare, &st));
	EXPECT_TRUE(same_stats(&zero, &st));
	/* The memory named was not the object's: untouched. */
	EXPECT_TRUE(ml_check(anon, 5));
	EXPECT_TRUE(ml_is_zero(anon + PAGE));
	/* Still not set up: SETUP works, once, and the object is a new, empty one. */
	ASSERT_EQ(0, ioctl(bare.fd, MUSERLOAD_IOC_SETUP, &setup));
	EXPECT_EQ(-1, ioctl(bare.fd, MUSERLOAD_IOC_SETUP, &setup));
	EXPECT_EQ(EBUSY, errno);
	p = mmap(NULL, 4 * PAGE, PROT_READ, MAP_SHARED, bare.fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	for (i = 0; i < 4; i++)
		EXPECT_TRUE(ml_is_zero(p + i * PAGE));
	munmap(p, 4 * PAGE);
	close(bare.fd);
	munmap(anon, 2 * PAGE);
}

/* SETUP again, of another size or the same: EBUSY, and the object keeps its sizes. */
TEST_F(errnos, setup_twice)
{
	struct muserload_setup bigger = { 2 * GUEST_PAGES * PAGE, 2 * STAGING_PAGES * PAGE, 0 };
	struct muserload_setup same = { GUEST_PAGES * PAGE, STAGING_PAGES * PAGE, 0 };
	struct ml *ml = &self->ml;
	struct muserload_stats before, after;

	ml_fill(ml->staging, 7);
	before = stats(_metadata, ml);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_SETUP, &bigger));
	EXPECT_EQ(EBUSY, errno);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_SETUP, &same));
	EXPECT_EQ(EBUSY, errno);
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
	/* Neither region grew. */
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, ml->fd,
				   GUEST_PAGES * PAGE));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, ml->fd,
				   MUSERLOAD_STAGING_OFFSET + STAGING_PAGES * PAGE));
	EXPECT_EQ(EINVAL, errno);
	/* What they hold is still there, and the armed pages still armed. */
	EXPECT_TRUE(ml_check(ml->guest, WITNESS));
	EXPECT_TRUE(ml_check(ml->staging, 7));
	EXPECT_EQ(GUEST_PAGES - 1, after.unloaded);
}

#define ENOMEM_CGROUP "/sys/fs/cgroup/muserload-errno-enomem"

/*
 * In a child that joins a cgroup of 16 MiB: a SETUP whose arrays (192 MiB) do not fit fails
 * with ENOMEM and leaves the object not set up: mmap and ARM still fail with EINVAL,
 * and a SETUP that fits works. Returns 0, or the step that went wrong.
 *
 * Between the failed SETUP and the rest it waits for @drained, which the test sets once
 * the cgroup's memory is back: since 7.3 a failed vmalloc() gives its pages back from a
 * worker, a moment later, and a task of a cgroup still full of them would meet the
 * cgroup's OOM killer (muserload.rst, SETUP's ENOMEM).
 */
static int setup_past_the_limit(volatile int *failed, volatile int *drained)
{
	struct muserload_setup big = { .size = 1ULL << 36 }, small = { .size = 4 * PAGE };
	char *anon = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			  -1, 0);
	struct ml ml = { .size = 4 * PAGE };
	char *p;

	if (anon == MAP_FAILED)
		return 10;
	ml.fd = open(MUSERLOAD_DEV, O_RDWR);
	if (ml.fd < 0 || join_cgroup(ENOMEM_CGROUP, getpid()))
		return 11;
	if (!ioctl(ml.fd, MUSERLOAD_IOC_SETUP, &big) || errno != ENOMEM)
		return 12;
	*failed = 1;
	while (!*drained)
		usleep(1000);
	if (mmap(NULL, PAGE, PROT_READ, MAP_SHARED, ml.fd, 0) != MAP_FAILED || errno != EINVAL)
		return 13;
	if (ml_arm(&ml, anon, PAGE, 0) != -EINVAL)
		return 14;
	if (ioctl(ml.fd, MUSERLOAD_IOC_SETUP, &small))
		return 15;
	p = mmap(NULL, 4 * PAGE, PROT_READ, MAP_SHARED, ml.fd, 0);
	if (p == MAP_FAILED || !ml_is_zero(p) || !ml_is_zero(p + 3 * PAGE))
		return 16;
	return 0;
}

TEST_F(errnos, setup_past_memcg_limit)
{
	volatile int *shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	long base;
	int status, i;
	pid_t pid;

	ASSERT_NE(MAP_FAILED, shared);
	shared[0] = shared[1] = 0;
	ASSERT_EQ(0, make_cgroup(ENOMEM_CGROUP, "16777216"));
	base = ml_read_key(ENOMEM_CGROUP "/memory.current", "");
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(setup_past_the_limit(&shared[0], &shared[1]));
	for (i = 0; i < 30000 && !shared[0] && waitpid(pid, NULL, WNOHANG) == 0; i++)
		usleep(1000);
	/* The child's own pages (its stack, page tables) stay; the failed arrays go. */
	for (i = 0; i < 1000 && ml_read_key(ENOMEM_CGROUP "/memory.current", "") > base + (4 << 20);
	     i++)
		usleep(10000);
	shared[1] = 1;
	status = reap(pid, 60);
	EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
		TH_LOG("status %#x", status);
	/* Refused, not killed. */
	EXPECT_EQ(0, ml_read_key(ENOMEM_CGROUP "/memory.events", "oom_kill"));
	EXPECT_EQ(0, rmdir(ENOMEM_CGROUP));
	munmap((void *)shared, PAGE);
}

#define KILL_CGROUP "/sys/fs/cgroup/muserload-errno-kill"

/* How a SETUP killed in kill_setup() ended, from the registers of its dying caller. */
enum setup_end { SETUP_EINTR, SETUP_ENOMEM, SETUP_DONE, SETUP_UNSEEN };

/* Milliseconds from @a to @b. */
static long ms_between(const struct timespec *a, const struct timespec *b)
{
	return (b->tv_sec - a->tv_sec) * 1000 + (b->tv_nsec - a->tv_nsec) / 1000000;
}

/*
 * Forks a child that sets up @fd (an object shared with it) with @pages pages, and kills
 * it while it fills its page arrays. The first array (4 bytes a page) is vmalloc()ed page
 * by page, charged to the child's cgroup 64 pages at a time; then it is filled, which
 * charges nothing: the kill comes once memory.current has grown by most of that array
 * and then stood still for 20 ms. The child never returns to userspace; its return value
 * is in its registers, read at its PTRACE_EVENT_EXIT stop.
 */
static enum setup_end kill_setup(struct __test_metadata *_metadata, int fd, __u64 pages)
{
	struct muserload_setup setup = { .size = pages * PAGE };
	struct timespec start, changed, now;
	struct user_regs_struct regs;
	enum setup_end end = SETUP_UNSEEN;
	int go[2], done[2], status;
	long threshold, last = -1, current;
	struct pollfd pfd;
	char c = 0;
	pid_t pid;

	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(done));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		close(go[1]);
		close(done[0]);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		/* Killed in there; or, too late, in pause(). */
		c = ioctl(fd, MUSERLOAD_IOC_SETUP, &setup) ? errno : 0;
		if (write(done[1], &c, 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(go[0]);
	close(done[1]);
	ASSERT_EQ(0, ptrace(PTRACE_SEIZE, pid, NULL,
			    (void *)(long)(PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL)));
	ASSERT_EQ(0, join_cgroup(KILL_CGROUP, pid));
	threshold = ml_read_key(KILL_CGROUP "/memory.current", "");
	ASSERT_LE(0, threshold);
	threshold += pages * 4 * 7 / 8;
	pfd = (struct pollfd){ .fd = done[0], .events = POLLIN };
	clock_gettime(CLOCK_MONOTONIC, &start);
	changed = start;
	ASSERT_EQ(1, write(go[1], &c, 1));
	for (;;) {
		current = ml_read_key(KILL_CGROUP "/memory.current", "");
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (current != last) {
			last = current;
			changed = now;
		} else if (current >= threshold && ms_between(&changed, &now) >= 20) {
			break;
		}
		/* SETUP returned: too late. */
		if (poll(&pfd, 1, 0) || ms_between(&start, &now) > 15000)
			break;
	}
	kill(pid, SIGKILL);
	close(go[1]);
	close(done[0]);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	if (WIFSTOPPED(status) && status >> 8 == (SIGTRAP | (PTRACE_EVENT_EXIT << 8))) {
		ASSERT_EQ(0, ptrace(PTRACE_GETREGS, pid, NULL, &regs));
		if (regs.orig_rax == SYS_ioctl && (long long)regs.rax == -EINTR)
			end = SETUP_EINTR;
		else if (regs.orig_rax == SYS_ioctl && (long long)regs.rax == -ENOMEM)
			end = SETUP_ENOMEM;
		else
			end = SETUP_DONE;
		TH_LOG("%llu pages: SETUP %s", (unsigned long long)pages,
		       regs.orig_rax == SYS_ioctl ? strerror(-(int)regs.rax) : "had returned");
		ptrace(PTRACE_CONT, pid, NULL, NULL);
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
	}
	EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	return end;
}

/*
 * A caller killed while SETUP fills its page arrays: SETUP returns EINTR (to a process
 * that never sees it, D5: a ptracer does), the object stays not set up, and the memory
 * of its arrays is given back. A kill during the arrays' allocation gives ENOMEM instead,
 * and one after SETUP is too late: either way, another try.
 */
TEST_F_TIMEOUT(errnos, setup_killed, 120)
{
	struct muserload_api api = { .api = MUSERLOAD_API };
	struct muserload_setup small = { .size = 4 * PAGE };
	__u64 pages = 1ULL << 22;
	enum setup_end end = SETUP_UNSEEN;
	long base;
	int tries, fd;

	ASSERT_EQ(0, make_cgroup(KILL_CGROUP, NULL));
	for (tries = 0; tries < 5 && end != SETUP_EINTR; tries++) {
		fd = open(MUSERLOAD_DEV, O_RDWR | O_CLOEXEC);
		ASSERT_LE(0, fd);
		ASSERT_EQ(0, ioctl(fd, MUSERLOAD_IOC_API, &api));
		base = ml_read_key(KILL_CGROUP "/memory.stat", "vmalloc");
		end = kill_setup(_metadata, fd, pages);
		ASSERT_NE(SETUP_UNSEEN, end) TH_LOG("no PTRACE_EVENT_EXIT stop");
		if (end == SETUP_DONE) {
			/* Too late: a bigger object takes longer to fill (at most 192 MiB). */
			if (pages < 1ULL << 24)
				pages *= 2;
			close(fd);
			continue;
		}
		/*
		 * Not set up, and the arrays' memory is back (memory.stat may lag by about
		 * 1 MiB; a vmalloc() area's KASAN shadow goes later, and is not in it).
		 */
		EXPECT_EQ(MAP_FAILED, mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0));
		EXPECT_EQ(EINVAL, errno);
		EXPECT_GT(base + (2L << 20), ml_read_key(KILL_CGROUP "/memory.stat", "vmalloc"));
		EXPECT_EQ(0, ioctl(fd, MUSERLOAD_IOC_SETUP, &small));
		close(fd);
	}
	EXPECT_EQ(SETUP_EINTR, end);
	EXPECT_EQ(0, rmdir(KILL_CGROUP));
}

/* LOADV with an unknown kind or flag: EINVAL, and nothing loaded. */
TEST_F(errnos, loadv_bad_mode)
{
	__u64 modes[] = { 0, 5, MUSERLOAD_LOAD_KIND_MASK, MUSERLOAD_LOAD_ZERO | (1 << 9),
			  MUSERLOAD_LOAD_ZERO | (1ULL << 63) };
	struct ml *ml = &self->ml;
	struct muserload_vec vec = { (uintptr_t)ml->guest + PAGE, 0, PAGE };
	struct muserload_loadv lv;
	struct muserload_stats before, after;
	unsigned int i;

	before = stats(_metadata, ml);
	for (i = 0; i < ARRAY_SIZE(modes); i++) {
		lv = (struct muserload_loadv){ (uintptr_t)&vec, 1, modes[i], 0 };
		EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
		EXPECT_EQ(EINVAL, errno);
		EXPECT_EQ(0, lv.loaded);
	}
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
	EXPECT_FALSE(was_loaded(ml, 1));
}

/*
 * A vectored MOVE whose second pair takes from guest memory: EINVAL, the first pair moved
 * (its staging slot emptied), the third not (its staging page still there, still mapped).
 */
TEST_F(errnos, loadv_move_src_in_guest)
{
	struct ml *ml = &self->ml;
	uintptr_t g = (uintptr_t)ml->guest, s = (uintptr_t)ml->staging;
	struct muserload_vec vec[3] = {
		{ g + 1 * PAGE, s, PAGE },
		{ g + 2 * PAGE, g + 5 * PAGE, PAGE },
		{ g + 3 * PAGE, s + 2 * PAGE, PAGE },
	};
	struct muserload_loadv lv = { (uintptr_t)vec, 3, MUSERLOAD_LOAD_MOVE, 0 };
	struct muserload_stats before, after;

	ml_fill(ml->staging, 20);
	ml_fill(ml->staging + 2 * PAGE, 22);
	before = stats(_metadata, ml);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(PAGE, lv.loaded);
	after = stats(_metadata, ml);
	EXPECT_EQ(before.loads_move + 1, after.loads_move);
	EXPECT_EQ(before.unloaded - 1, after.unloaded);
	EXPECT_TRUE(ml_check(ml->guest + PAGE, 20));
	EXPECT_TRUE(ml_is_zero(ml->staging));
	EXPECT_TRUE(ml_check(ml->staging + 2 * PAGE, 22));
	/* Pages 2 and 3 are still armed, page 5 (the bad source) too. */
	EXPECT_FALSE(was_loaded(ml, 2));
	EXPECT_FALSE(was_loaded(ml, 3));
	EXPECT_FALSE(was_loaded(ml, 5));
}

/*
 * A RESOLVE whose loads fail after a good pair: EFAULT (the vec, a COPY source, a target
 * outside the object), EINVAL (a target in staging, a MOVE from guest memory, a MOVE into
 * staging from an unreadable page: the target is checked first). Each
 * reports the pair it loaded and reads no event: the toucher's event stays queued, and
 * the call that finally loads its page gets it.
 */
TEST_F(errnos, resolve_load_errors)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(PAGE)));
	void *none = unreadable_page();
	char *outside = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t g = (uintptr_t)ml->guest, s = (uintptr_t)ml->staging;
	struct {
		struct muserload_vec vec[2];
		__u64 mode;
		int err;
		int loaded_page;	/* loaded by the good pair, or 0 */
	} cases[] = {
		{ { { g + PAGE, (uintptr_t)buf, PAGE }, { g + 2 * PAGE, (uintptr_t)none, PAGE } },
		  MUSERLOAD_LOAD_COPY, EFAULT, 1 },
		{ { { g + 3 * PAGE, (uintptr_t)buf, PAGE }, { (uintptr_t)outside, (uintptr_t)buf,
							      PAGE } },
		  MUSERLOAD_LOAD_COPY, EFAULT, 3 },
		{ { { g + 4 * PAGE, (uintptr_t)buf, PAGE }, { s, (uintptr_t)buf, PAGE } },
		  MUSERLOAD_LOAD_COPY, EINVAL, 4 },
		{ { { g + 5 * PAGE, s, PAGE }, { g + 6 * PAGE, g + 10 * PAGE, PAGE } },
		  MUSERLOAD_LOAD_MOVE, EINVAL, 5 },
		{ { { g + 7 * PAGE, s, PAGE }, { s + PAGE, (uintptr_t)none, PAGE } },
		  MUSERLOAD_LOAD_MOVE, EINVAL, 7 },
	};
	struct muserload_resolve res;
	struct muserload_event ev[4];
	struct muserload_vec last = { g + 9 * PAGE, (uintptr_t)buf, PAGE };
	unsigned int i;

	ASSERT_NE(NULL, none);
	ASSERT_NE(MAP_FAILED, outside);
	ml_fill(buf, 30);
	ml_fill(ml->staging, 31);
	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 9);

	/* The vec itself cannot be read: nothing loaded, nothing read. */
	res = (struct muserload_resolve){
		.load = { (uintptr_t)none, 1, MUSERLOAD_LOAD_COPY, 0 },
		.events = (uintptr_t)ev,
		.nr_events = 4,
		.flags = MUSERLOAD_RESOLVE_NONBLOCK,
	};
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(0, res.load.loaded);
	EXPECT_TRUE(queued(self->events));

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		struct muserload_stats before = stats(_metadata, ml), after;
		int seed = 30;

		/* A MOVE's page is staging's (filled again: a MOVE empties it), a COPY's buf's. */
		if (cases[i].mode == MUSERLOAD_LOAD_MOVE) {
			seed = 31;
			ml_fill(ml->staging, seed);
		}

		res = (struct muserload_resolve){
			.load = { (uintptr_t)cases[i].vec, 2, cases[i].mode, 0 },
			.events = (uintptr_t)ev,
			.nr_events = 4,
			.flags = MUSERLOAD_RESOLVE_NONBLOCK,
		};
		EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res)) TH_LOG("case %u", i);
		EXPECT_EQ(cases[i].err, errno) TH_LOG("case %u", i);
		EXPECT_EQ(PAGE, res.load.loaded) TH_LOG("case %u", i);
		EXPECT_EQ(0, res.nr_events);
		EXPECT_TRUE(queued(self->events)) TH_LOG("case %u read the event", i);
		after = stats(_metadata, ml);
		EXPECT_EQ(before.unloaded - 1, after.unloaded);
		EXPECT_TRUE(ml_check(ml->guest + cases[i].loaded_page * PAGE, seed));
	}
	/* The second pairs' targets are still armed. */
	EXPECT_FALSE(was_loaded(ml, 2));
	EXPECT_FALSE(was_loaded(ml, 6));
	EXPECT_TRUE(ml_check(ml->guest, WITNESS));

	/* Loads the toucher's page and reads its event: it was never lost. */
	res = (struct muserload_resolve){
		.load = { (uintptr_t)&last, 1, MUSERLOAD_LOAD_COPY, 0 },
		.events = (uintptr_t)ev,
		.nr_events = 4,
		.flags = MUSERLOAD_RESOLVE_NONBLOCK,
	};
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res));
	EXPECT_EQ(PAGE, res.load.loaded);
	ASSERT_EQ(1, res.nr_events);
	EXPECT_EQ(9 * PAGE, ev[0].offset);
	finish_toucher(_metadata, ml, &self->toucher, 9);
	munmap(outside, PAGE);
	munmap(none, PAGE);
}

/* EVENTS with unknown flags: EINVAL, and the object can still have its descriptor. */
TEST_F(errnos, events_bad_flags)
{
	unsigned long flags[] = { 1, O_RDWR, O_APPEND, ~0UL,
				  ~(unsigned long)(MUSERLOAD_EVENTS_NONBLOCK |
						   MUSERLOAD_EVENTS_CLOEXEC) };
	struct ml *ml = &self->ml;
	struct muserload_stats before, after;
	struct muserload_event ev;
	unsigned int i;

	before = stats(_metadata, ml);
	for (i = 0; i < ARRAY_SIZE(flags); i++) {
		EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, flags[i]));
		EXPECT_EQ(EINVAL, errno) TH_LOG("flags %#lx", flags[i]);
	}
	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	EXPECT_EQ(-1, read(self->events, &ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
}

/*
 * No descriptor left under RLIMIT_NOFILE: EMFILE, and the object still has no events
 * descriptor (and was not aborted): it gets one once the limit allows.
 */
TEST_F(errnos, events_emfile)
{
	struct ml *ml = &self->ml;
	struct muserload_stats before, after;
	struct muserload_event ev;
	struct rlimit old, low;
	int lowest, fd, err;

	lowest = open("/dev/null", O_RDONLY);
	ASSERT_LE(0, lowest);
	close(lowest);
	ASSERT_EQ(0, getrlimit(RLIMIT_NOFILE, &old));
	low = old;
	low.rlim_cur = lowest;
	before = stats(_metadata, ml);
	ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &low));
	fd = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	err = errno;
	ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &old));
	EXPECT_EQ(-1, fd);
	EXPECT_EQ(EMFILE, err);
	if (fd >= 0)
		close(fd);
	after = stats(_metadata, ml);
	EXPECT_TRUE(same_stats(&before, &after));
	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	EXPECT_EQ(-1, read(self->events, &ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);
}

/* A read() with room for less than a record: EINVAL, and the queued event stays. */
TEST_F(errnos, read_small_buffer)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev[2];

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 3);
	EXPECT_EQ(-1, read(self->events, ev, sizeof(ev[0]) - 1));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-1, read(self->events, ev, 0));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_TRUE(queued(self->events));
	ASSERT_EQ(sizeof(ev[0]), read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(3 * PAGE, ev[0].offset);
	finish_toucher(_metadata, ml, &self->toucher, 3);
}

/*
 * A blocking descriptor made non-blocking with fcntl(): EAGAIN while nothing is queued,
 * and the next event is read as usual.
 */
TEST_F(errnos, read_eagain_fcntl)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev[2];
	int flags;

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, self->events);
	flags = fcntl(self->events, F_GETFL);
	ASSERT_LE(0, flags);
	ASSERT_EQ(0, fcntl(self->events, F_SETFL, flags | O_NONBLOCK));
	EXPECT_EQ(-1, read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);
	start_toucher(_metadata, ml, self->events, &self->toucher, 4);
	ASSERT_EQ(sizeof(ev[0]), read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(4 * PAGE, ev[0].offset);
	EXPECT_EQ(-1, read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);
	finish_toucher(_metadata, ml, &self->toucher, 4);
}

/* A signal without SA_RESTART while read() waits: EINTR, and no event is lost. */
TEST_F(errnos, read_eintr)
{
	struct ml *ml = &self->ml;
	struct blocked b = { .ml = ml };
	struct muserload_event ev[2];

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, self->events);
	b.events = self->events;
	catch_usr2(0);
	interrupt_blocked(_metadata, &b);
	EXPECT_TRUE(blocked_ended(&b));
	EXPECT_EQ(EINTR, b.err);
	EXPECT_EQ(-1, b.got);
	blocked_join(&b);
	/* The next fault's event comes, once. */
	start_toucher(_metadata, ml, self->events, &self->toucher, 4);
	ASSERT_EQ(sizeof(ev[0]), read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(4 * PAGE, ev[0].offset);
	finish_toucher(_metadata, ml, &self->toucher, 4);
}

/* A signal with SA_RESTART while read() waits: it goes on waiting, and gets the event. */
TEST_F(errnos, read_restarts)
{
	struct ml *ml = &self->ml;
	struct blocked b = { .ml = ml };

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, self->events);
	b.events = self->events;
	catch_usr2(SA_RESTART);
	interrupt_blocked(_metadata, &b);
	EXPECT_TRUE(blocked_asleep(&b)) TH_LOG("read() returned: %s", strerror(b.err));
	start_toucher(_metadata, ml, self->events, &self->toucher, 5);
	EXPECT_TRUE(blocked_ended(&b));
	EXPECT_EQ(0, b.err);
	EXPECT_EQ(sizeof(b.ev[0]), b.got);
	EXPECT_EQ(5 * PAGE, b.ev[0].offset);
	finish_toucher(_metadata, ml, &self->toucher, 5);
	blocked_join(&b);
}

/* After ABORT the events queued before it are still read; then end of file. */
TEST_F(errnos, read_eof_after_events)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev[2];
	int status;

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 2);
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ABORT));
	status = reap(self->toucher, 5);
	self->toucher = 0;
	EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS);
	ASSERT_EQ(sizeof(ev[0]), read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(2 * PAGE, ev[0].offset);
	EXPECT_EQ(0, read(self->events, ev, sizeof(ev)));
	EXPECT_EQ(0, read(self->events, ev, sizeof(ev)));
}

static int fail_nth = -1;

/*
 * Fault injection as fault_injection_test.c sets it up (GFP_KERNEL and order-0
 * allocations may fail), without the stack trace filter the fuzzer aims at the module
 * and leaves behind: the allocations of mmap() are the kernel's own.
 */
static int setup_injection(void)
{
	static const char *const knobs[][3] = {
		{ "failslab/ignore-gfp-wait", "N", "" },
		{ "fail_page_alloc/ignore-gfp-wait", "N", "" },
		{ "fail_page_alloc/min-order", "0", "" },
		{ "failslab/verbose", "0", "" },
		{ "fail_page_alloc/verbose", "0", "" },
		/* Optional: CONFIG_FAULT_INJECTION_STACKTRACE_FILTER. */
		{ "failslab/require-start", "0", "optional" },
		{ "failslab/require-end", "0xffffffffffffffff", "optional" },
		{ "fail_page_alloc/require-start", "0", "optional" },
		{ "fail_page_alloc/require-end", "0xffffffffffffffff", "optional" },
	};
	char path[128];
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(knobs); i++) {
		snprintf(path, sizeof(path), "/sys/kernel/debug/%s", knobs[i][0]);
		if (ml_write_file(path, knobs[i][1]) && !knobs[i][2][0])
			return -1;
	}
	fail_nth = open("/proc/thread-self/fail-nth", O_RDWR);
	return fail_nth < 0 ? -1 : 0;
}

FIXTURE(inject)
{
	struct ml ml;
	int events;
	pid_t toucher;
	char *src;
};

FIXTURE_SETUP(inject)
{
	int i;

	self->events = -1;
	self->toucher = 0;
	self->ml.fd = -1;
	if (setup_injection())
		SKIP(return, "no fault injection (CONFIG_FAULT_INJECTION_DEBUG_FS)");
	open_object(_metadata, &self->ml);
	/* Faulted in now: a copy from it must not allocate. */
	self->src = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	ASSERT_NE(MAP_FAILED, self->src);
	for (i = 0; i < 4; i++)
		ml_fill(self->src + i * PAGE, 10 + i);
}

FIXTURE_TEARDOWN(inject)
{
	if (fail_nth >= 0)
		pwrite(fail_nth, "0", 1, 0);
	if (self->ml.fd >= 0)
		close_object(&self->ml, self->events, self->toucher);
}

/*
 * mmap() failing with ENOMEM (one of the kernel's allocations for the mapping) makes no
 * mapping and changes nothing in the object.
 */
TEST_F(inject, mmap_enomem)
{
	struct ml *ml = &self->ml;
	struct muserload_stats before, after;
	int nth, err, failures = 0, done = 0;
	unsigned char vec[4];
	char *hole, *p;

	/* An address range known to be free. */
	hole = mmap(NULL, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, hole);
	ASSERT_EQ(0, munmap(hole, 4 * PAGE));
	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		before = stats(_metadata, ml);
		ml_inject(fail_nth, nth);
		p = mmap(hole, 4 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_FIXED_NOREPLACE, ml->fd, 0);
		err = errno;
		done = !ml_injected(fail_nth);
		if (p != MAP_FAILED) {
			EXPECT_EQ(hole, p);
			/* A mapping of the object: page 0 shows through it. */
			EXPECT_TRUE(ml_check(p, WITNESS));
			munmap(p, 4 * PAGE);
			continue;
		}
		failures++;
		EXPECT_EQ(ENOMEM, err) TH_LOG("allocation %d", nth);
		/* Nothing is mapped there. */
		EXPECT_EQ(-1, mincore(hole, 4 * PAGE, vec));
		EXPECT_EQ(ENOMEM, errno);
		after = stats(_metadata, ml);
		EXPECT_TRUE(same_stats(&before, &after));
		EXPECT_TRUE(ml_check(ml->guest, WITNESS));
	}
	EXPECT_TRUE(done);
	EXPECT_LT(0, failures);
}

/*
 * A failed EVENTS (ENOMEM) leaves the object without an events descriptor and not
 * aborted: it gets one afterwards, not at end of file.
 */
TEST_F(inject, events_enomem)
{
	int nth, fd, err, failures = 0, done = 0;
	struct muserload_stats before, after;
	struct muserload_event ev;
	struct ml ml;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		open_object(_metadata, &ml);
		before = stats(_metadata, &ml);
		ml_inject(fail_nth, nth);
		fd = ioctl(ml.fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
		err = errno;
		done = !ml_injected(fail_nth);
		if (fd < 0) {
			failures++;
			EXPECT_EQ(ENOMEM, err) TH_LOG("allocation %d", nth);
			after = stats(_metadata, &ml);
			EXPECT_TRUE(same_stats(&before, &after));
			fd = ioctl(ml.fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
			ASSERT_LE(0, fd) TH_LOG("after a failed EVENTS: %s", strerror(errno));
		}
		EXPECT_EQ(-1, read(fd, &ev, sizeof(ev)));
		EXPECT_EQ(EAGAIN, errno);
		close(fd);
		ml_close(&ml);
	}
	EXPECT_TRUE(done);
	EXPECT_LT(0, failures);
}

/*
 * Checks what a vectored load of guest pages 1-4 from src (in two pairs of two pages)
 * that stopped after @loaded bytes left: those pages hold their data, the others are
 * still armed, and the stats count exactly the pages loaded. Then arms them all again.
 */
static void check_partial(struct __test_metadata *_metadata, struct ml *ml,
			  const struct muserload_stats *before, __u64 loaded)
{
	struct muserload_stats after = stats(_metadata, ml);
	__u64 i, pages = loaded / PAGE;

	ASSERT_EQ(0, loaded % PAGE);
	ASSERT_GE(4 * PAGE, loaded);
	EXPECT_EQ(before->loads_copy + pages, after.loads_copy);
	EXPECT_EQ(before->unloaded - pages, after.unloaded);
	for (i = 0; i < pages; i++)
		EXPECT_TRUE(ml_check(ml->guest + (1 + i) * PAGE, 10 + i));
	if (pages < 4)
		EXPECT_FALSE(was_loaded(ml, 1 + pages));
	ASSERT_EQ(0, ml_arm(ml, ml->guest + PAGE, 4 * PAGE, 0));
}

/*
 * LOADV failing with ENOMEM at every allocation in turn: before any load (its pairs'
 * array) or after some (a page): the pages before it are loaded and counted, the rest
 * still armed.
 */
TEST_F(inject, loadv_enomem)
{
	struct ml *ml = &self->ml;
	uintptr_t g = (uintptr_t)ml->guest, src = (uintptr_t)self->src;
	struct muserload_vec vec[2] = {
		{ g + PAGE, src, 2 * PAGE },
		{ g + 3 * PAGE, src + 2 * PAGE, 2 * PAGE },
	};
	int nth, ret, err, failures = 0, partial = 0, done = 0;
	struct muserload_stats before;
	struct muserload_loadv lv;

	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		lv = (struct muserload_loadv){ (uintptr_t)vec, 2, MUSERLOAD_LOAD_COPY, 0 };
		before = stats(_metadata, ml);
		ml_inject(fail_nth, nth);
		ret = ioctl(ml->fd, MUSERLOAD_IOC_LOADV, &lv);
		err = errno;
		done = !ml_injected(fail_nth);
		if (ret) {
			failures++;
			partial += lv.loaded > 0;
			EXPECT_EQ(ENOMEM, err) TH_LOG("allocation %d", nth);
			EXPECT_GT(4 * PAGE, lv.loaded);
		} else {
			EXPECT_EQ(4 * PAGE, lv.loaded);
		}
		check_partial(_metadata, ml, &before, lv.loaded);
	}
	EXPECT_TRUE(done);
	EXPECT_LT(0, failures);
	EXPECT_LT(0, partial);
	EXPECT_TRUE(ml_check(ml->guest, WITNESS));
}

/*
 * RESOLVE whose loads fail with ENOMEM at every allocation in turn: the pages before the
 * failure are loaded, and no event is read: the toucher's stays queued until the call
 * that runs through reads it.
 */
TEST_F(inject, resolve_enomem)
{
	struct ml *ml = &self->ml;
	uintptr_t g = (uintptr_t)ml->guest, src = (uintptr_t)self->src;
	struct muserload_vec vec[2] = {
		{ g + PAGE, src, 2 * PAGE },
		{ g + 3 * PAGE, src + 2 * PAGE, 2 * PAGE },
	};
	int nth, ret, err, failures = 0, partial = 0, done = 0;
	struct muserload_stats before;
	struct muserload_resolve res;
	struct muserload_event ev[4];

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 9);
	/* Faulted in now: the injected failure is for the call, not for a fault on this. */
	memset(ev, 0, sizeof(ev));
	for (nth = 1; !done && nth < MAX_NTH; nth++) {
		res = (struct muserload_resolve){
			.load = { (uintptr_t)vec, 2, MUSERLOAD_LOAD_COPY, 0 },
			.events = (uintptr_t)ev,
			.nr_events = 4,
			.flags = MUSERLOAD_RESOLVE_NONBLOCK,
		};
		before = stats(_metadata, ml);
		ml_inject(fail_nth, nth);
		ret = ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res);
		err = errno;
		done = !ml_injected(fail_nth);
		if (!ret) {
			/* It ran through: it loaded the four pages and read the event. */
			EXPECT_EQ(4 * PAGE, res.load.loaded);
			ASSERT_EQ(1, res.nr_events);
			EXPECT_EQ(9 * PAGE, ev[0].offset);
			done = 1;
			break;
		}
		failures++;
		partial += res.load.loaded > 0;
		EXPECT_EQ(ENOMEM, err) TH_LOG("allocation %d", nth);
		EXPECT_GT(4 * PAGE, res.load.loaded);
		EXPECT_EQ(0, res.nr_events);
		EXPECT_TRUE(queued(self->events)) TH_LOG("allocation %d: the event was read", nth);
		check_partial(_metadata, ml, &before, res.load.loaded);
	}
	EXPECT_TRUE(done);
	EXPECT_LT(0, failures);
	/*
	 * Not required: the walk ends at the first call that runs through, and one whose
	 * injected failure hit a best-effort allocation (mapping the loaded pages into the
	 * caller) does, before any later pair's page could fail: the likely reason why the
	 * debug guest showed no partial load here.
	 * loadv_enomem covers partial loads; every failure's loads are checked above.
	 */
	TH_LOG("%d failures, %d after a partial load", failures, partial);
	finish_toucher(_metadata, ml, &self->toucher, 9);
}

/*
 * "Without loads the call is restarted as read() is (EINTR only if the handler has no
 * SA_RESTART)": with SA_RESTART it goes on waiting, and returns the event that comes
 * (it failed with EINVAL: the request went back with nr_events 0 before the restart).
 */
TEST_F(errnos, resolve_restarts)
{
	struct ml *ml = &self->ml;
	struct blocked b = { .ml = ml, .events = -1 };

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	catch_usr2(SA_RESTART);
	interrupt_blocked(_metadata, &b);
	EXPECT_TRUE(blocked_asleep(&b)) TH_LOG("RESOLVE returned: %s", strerror(b.err));
	start_toucher(_metadata, ml, self->events, &self->toucher, 5);
	EXPECT_TRUE(blocked_ended(&b));
	EXPECT_EQ(0, b.err) TH_LOG("RESOLVE: %s", strerror(b.err));
	EXPECT_EQ(1, b.got);
	EXPECT_EQ(5 * PAGE, b.ev[0].offset);
	finish_toucher(_metadata, ml, &self->toucher, 5);
	blocked_join(&b);
}

/*
 * "A failing ioctl changes nothing, except that a load reports the pages it did before it
 * stopped": a MOVE that cannot write its struct back has moved nothing (its staging page
 * is where it was), and a RESOLVE that cannot has taken no event (both did their work,
 * then failed to report it).
 */
TEST_F(errnos, read_only_argument_changes_nothing)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev[4];
	struct muserload_load load = {
		(uintptr_t)ml->guest + PAGE, (uintptr_t)ml->staging, PAGE, MUSERLOAD_LOAD_MOVE };
	struct muserload_resolve res = {
		.events = (uintptr_t)ev,
		.nr_events = 4,
		.flags = MUSERLOAD_RESOLVE_NONBLOCK,
	};
	struct muserload_stats before, after;
	void *ro_load = read_only_copy(&load, sizeof(load));
	void *ro_res = read_only_copy(&res, sizeof(res));

	ASSERT_NE(NULL, ro_load);
	ASSERT_NE(NULL, ro_res);
	ml_fill(ml->staging, 40);
	before = stats(_metadata, ml);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_LOAD, ro_load));
	EXPECT_EQ(EFAULT, errno);
	after = stats(_metadata, ml);
	EXPECT_TRUE(ml_check(ml->staging, 40)) TH_LOG("the staging page moved");
	EXPECT_EQ(before.loads_move, after.loads_move);
	EXPECT_EQ(before.unloaded, after.unloaded);

	self->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->events);
	start_toucher(_metadata, ml, self->events, &self->toucher, 7);
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, ro_res));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_TRUE(queued(self->events)) TH_LOG("the event was taken");
	finish_toucher(_metadata, ml, &self->toucher, 7);
	munmap(ro_load, PAGE);
	munmap(ro_res, PAGE);
}

TEST_HARNESS_MAIN
