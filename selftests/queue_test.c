// SPDX-License-Identifier: GPL-2.0
/*
 * Queue mode: faults wait, the resolver reads one event per page from the
 * events descriptor (read, poll, epoll) and loads, or does both in one
 * MUSERLOAD_IOC_RESOLVE; kernel-mode accesses wait too; the resolver going
 * away or ABORT gives SIGBUS instead of a hang.
 */
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 64

FIXTURE(queue)
{
	struct ml ml;
};

FIXTURE_SETUP(queue)
{
	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, 0));
	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, GUEST_PAGES * PAGE, 0));
}

FIXTURE_TEARDOWN(queue)
{
	ml_close(&self->ml);
}

struct toucher {
	pthread_t thread;
	volatile char *addr;
	int write;
	uint64_t word;
	pid_t tid;
};

static void *touch_main(void *arg)
{
	struct toucher *t = arg;

	t->tid = syscall(SYS_gettid);
	if (t->write)
		*(volatile uint64_t *)t->addr = 0x5a5a;
	else
		t->word = *(volatile uint64_t *)t->addr;
	return NULL;
}

TEST_F(queue, event_then_load)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev;
	struct muserload_stats st;
	struct toucher t = { .addr = ml->guest + 5 * PAGE + 24 };
	char buf[PAGE] __attribute__((aligned(8)));
	void *bad;
	int events;

	events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	ASSERT_LE(0, events);
	/* One events descriptor per object. */
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0));
	EXPECT_EQ(EBUSY, errno);

	ASSERT_EQ(0, pthread_create(&t.thread, NULL, touch_main, &t));
	/* A read into a bad buffer fails and loses nothing. */
	bad = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, bad);
	EXPECT_EQ(-1, read(events, bad, sizeof(ev)));
	EXPECT_EQ(EFAULT, errno);
	munmap(bad, PAGE);
	ASSERT_EQ(sizeof(ev), read(events, &ev, sizeof(ev)));
	EXPECT_EQ((uintptr_t)ml->guest + 5 * PAGE, ev.address);
	EXPECT_EQ(5 * PAGE, ev.offset);
	EXPECT_EQ(0, ev.flags);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_queue_user);

	ml_fill(buf, 77);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 5 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ASSERT_EQ(0, pthread_join(t.thread, NULL));
	EXPECT_EQ(ev.tid, t.tid);
	EXPECT_EQ(((uint64_t *)buf)[3], t.word);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.fault_waits);
	EXPECT_EQ(0, st.waiters);
	EXPECT_EQ(GUEST_PAGES - 1, st.unloaded);
	EXPECT_LT(0, st.wait_ns_total);
	close(events);
}

TEST_F(queue, write_fault_flag)
{
	struct ml *ml = &self->ml;
	struct toucher t = { .addr = ml->guest, .write = 1 };
	struct muserload_event ev;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);

	ASSERT_LE(0, events);
	ASSERT_EQ(0, pthread_create(&t.thread, NULL, touch_main, &t));
	ASSERT_EQ(sizeof(ev), read(events, &ev, sizeof(ev)));
	EXPECT_EQ(MUSERLOAD_EVENT_WRITE, ev.flags);
	ASSERT_EQ(0, ml_load(ml, ml->guest, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL));
	ASSERT_EQ(0, pthread_join(t.thread, NULL));
	EXPECT_EQ(0x5a5a, *(uint64_t *)ml->guest);
	close(events);
}

TEST_F(queue, read_rules)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	struct pollfd pfd = { .fd = events, .events = POLLIN };

	ASSERT_LE(0, events);
	EXPECT_EQ(-1, read(events, &ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);
	EXPECT_EQ(-1, read(events, &ev, sizeof(ev) - 1));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(0, poll(&pfd, 1, 0));
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 1));
	/* After ABORT a reader sees end of file and poll says so. */
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ABORT));
	EXPECT_EQ(0, read(events, &ev, sizeof(ev)));
	EXPECT_EQ(1, poll(&pfd, 1, 0));
	EXPECT_TRUE(pfd.revents & POLLHUP);
	close(events);
}

/* One MUSERLOAD_IOC_RESOLVE: @nr loads of @vec (COPY), then up to 4 events. */
static int resolve(struct ml *ml, struct muserload_vec *vec, __u64 nr,
		   struct muserload_event *ev, __u32 flags,
		   struct muserload_resolve *out)
{
	*out = (struct muserload_resolve){
		.load = {
			.vec = (uintptr_t)vec,
			.count = nr,
			.mode = MUSERLOAD_LOAD_COPY,
		},
		.events = (uintptr_t)ev,
		.nr_events = 4,
		.flags = flags,
	};
	return ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, out) ? -errno : 0;
}

/* A resolver's loop in one call per step: each call loads and reads on. */
TEST_F(queue, resolve_loads_then_reads)
{
	struct ml *ml = &self->ml;
	struct toucher t1 = { .addr = ml->guest + 3 * PAGE };
	struct toucher t2 = { .addr = ml->guest + 7 * PAGE + 8 };
	char buf1[PAGE] __attribute__((aligned(8)));
	char buf2[PAGE] __attribute__((aligned(8)));
	struct muserload_vec vec;
	struct muserload_event ev[4];
	struct muserload_resolve res;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);

	ASSERT_LE(0, events);
	ml_fill(buf1, 3);
	ml_fill(buf2, 7);
	ASSERT_EQ(0, pthread_create(&t1.thread, NULL, touch_main, &t1));
	/* Nothing to load yet: it waits for the first event. */
	ASSERT_EQ(0, resolve(ml, NULL, 0, ev, 0, &res));
	ASSERT_EQ(1, res.nr_events);
	EXPECT_EQ(3 * PAGE, ev[0].offset);
	EXPECT_EQ(0, res.load.loaded);

	ASSERT_EQ(0, pthread_create(&t2.thread, NULL, touch_main, &t2));
	EXPECT_EQ(2, ml_wait_for_waiters(ml, 2));
	/* Loads page 3 (its toucher goes on) and reads page 7's event. */
	vec = (struct muserload_vec){ (uintptr_t)ml->guest + 3 * PAGE, (uintptr_t)buf1, PAGE };
	ASSERT_EQ(0, resolve(ml, &vec, 1, ev, 0, &res));
	EXPECT_EQ(PAGE, res.load.loaded);
	ASSERT_EQ(1, res.nr_events);
	EXPECT_EQ(7 * PAGE, ev[0].offset);
	ASSERT_EQ(0, pthread_join(t1.thread, NULL));
	EXPECT_EQ(((uint64_t *)buf1)[0], t1.word);

	/* The last load: no event follows, and NONBLOCK does not wait for one. */
	vec = (struct muserload_vec){ (uintptr_t)ml->guest + 7 * PAGE, (uintptr_t)buf2, PAGE };
	ASSERT_EQ(0, resolve(ml, &vec, 1, ev, MUSERLOAD_RESOLVE_NONBLOCK, &res));
	EXPECT_EQ(PAGE, res.load.loaded);
	EXPECT_EQ(0, res.nr_events);
	ASSERT_EQ(0, pthread_join(t2.thread, NULL));
	EXPECT_EQ(((uint64_t *)buf2)[1], t2.word);

	/* After ABORT a waiting call returns no event, as read() returns 0. */
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ABORT));
	ASSERT_EQ(0, resolve(ml, NULL, 0, ev, 0, &res));
	EXPECT_EQ(0, res.nr_events);
	close(events);
}

/* Bad requests fail whole; a failed load or copy-out loses no event. */
TEST_F(queue, resolve_rules)
{
	struct ml *ml = &self->ml;
	struct toucher t = { .addr = ml->guest + 2 * PAGE };
	char buf[PAGE] __attribute__((aligned(8)));
	struct muserload_vec vec = { (uintptr_t)ml->guest, (uintptr_t)buf, PAGE };
	struct muserload_event ev[4];
	struct muserload_resolve res;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	void *bad;

	ASSERT_LE(0, events);
	ml_fill(buf, 0);
	EXPECT_EQ(-EINVAL, resolve(ml, NULL, 0, ev, 2, &res));
	res.flags = 0;
	res.nr_events = 0;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res));
	EXPECT_EQ(EINVAL, errno);
	EXPECT_EQ(-EINVAL, resolve(ml, &vec, MUSERLOAD_LOADV_MAX + 1, ev,
				   MUSERLOAD_RESOLVE_NONBLOCK, &res));
	res.load.mode = 0x77;
	res.load.count = 1;
	EXPECT_EQ(-1, ioctl(ml->fd, MUSERLOAD_IOC_RESOLVE, &res));
	EXPECT_EQ(EINVAL, errno);
	/* Nothing queued and NONBLOCK: success with no event. */
	ASSERT_EQ(0, resolve(ml, NULL, 0, ev, MUSERLOAD_RESOLVE_NONBLOCK, &res));
	EXPECT_EQ(0, res.nr_events);

	ASSERT_EQ(0, pthread_create(&t.thread, NULL, touch_main, &t));
	EXPECT_EQ(1, ml_wait_for_waiters(ml, 1));
	/* Page 0 loads; the events go to a bad buffer: EFAULT, the event stays. */
	bad = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, bad);
	EXPECT_EQ(-EFAULT, resolve(ml, &vec, 1, bad, 0, &res));
	EXPECT_EQ(PAGE, res.load.loaded);
	munmap(bad, PAGE);
	/* Page 0 is loaded now: EEXIST before any event is read. */
	EXPECT_EQ(-EEXIST, resolve(ml, &vec, 1, ev, 0, &res));
	EXPECT_EQ(0, res.load.loaded);
	EXPECT_EQ(0, res.nr_events);
	/* The event is still there. */
	ASSERT_EQ(0, resolve(ml, NULL, 0, ev, MUSERLOAD_RESOLVE_NONBLOCK, &res));
	ASSERT_EQ(1, res.nr_events);
	EXPECT_EQ(2 * PAGE, ev[0].offset);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 2 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ASSERT_EQ(0, pthread_join(t.thread, NULL));
	close(events);
}

static void noop_handler(int sig)
{
}

/* Signals the thread @arg once it has had time to start waiting. */
static void *interrupt_main(void *arg)
{
	usleep(100000);
	pthread_kill(*(pthread_t *)arg, SIGUSR2);
	return NULL;
}

/* A signal that interrupts the wait after loads: EINTR, the loads done. */
TEST_F(queue, resolve_interrupted_after_loads)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(8)));
	struct muserload_vec vec = { (uintptr_t)ml->guest, (uintptr_t)buf, PAGE };
	struct muserload_event ev[4];
	struct muserload_resolve res;
	pthread_t self_thread = pthread_self(), interrupter;
	struct sigaction sa = { .sa_handler = noop_handler };
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);

	ASSERT_LE(0, events);
	/* SA_RESTART must not make the kernel load again: the call ends. */
	sa.sa_flags = SA_RESTART;
	ASSERT_EQ(0, sigaction(SIGUSR2, &sa, NULL));
	ml_fill(buf, 0);
	ASSERT_EQ(0, pthread_create(&interrupter, NULL, interrupt_main, &self_thread));
	EXPECT_EQ(-EINTR, resolve(ml, &vec, 1, ev, 0, &res));
	EXPECT_EQ(PAGE, res.load.loaded);
	EXPECT_EQ(0, res.nr_events);
	EXPECT_TRUE(ml_check(ml->guest, 0));
	ASSERT_EQ(0, pthread_join(interrupter, NULL));
	close(events);
}

/* How a resolver of many_resolvers takes its events. */
enum resolver_kind { BY_READ, BY_POLL_AND_RESOLVE, BY_RESOLVE };

struct multi_resolver {
	struct ml *ml;
	int events;
	enum resolver_kind kind;
	pthread_t thread;
	unsigned int *seen;	/* per page, shared by all: events received */
	unsigned long served;
	int error;
};

/* Counts @n events and loads their pages; with @vec, only fills it for RESOLVE to load. */
static void take_events(struct multi_resolver *r, struct muserload_event *ev, int n,
			struct muserload_vec *vec, char (*bufs)[PAGE])
{
	int i;

	for (i = 0; i < n; i++) {
		__u64 page = ev[i].offset / PAGE;

		__atomic_fetch_add(&r->seen[page], 1, __ATOMIC_RELAXED);
		ml_fill(bufs[i], page);
		if (vec)
			vec[i] = (struct muserload_vec){
				(uintptr_t)r->ml->guest + page * PAGE, (uintptr_t)bufs[i], PAGE };
		else if (ml_load(r->ml, r->ml->guest + page * PAGE, bufs[i], PAGE,
				 MUSERLOAD_LOAD_COPY, NULL))
			r->error = errno;
		r->served++;
	}
}

/* A resolver's loop, until the object is aborted. */
static void *multi_resolver_main(void *arg)
{
	static __thread char bufs[4][PAGE] __attribute__((aligned(8)));
	struct multi_resolver *r = arg;
	struct muserload_event ev[4];
	struct muserload_vec vec[4];
	struct muserload_resolve res;
	struct pollfd pfd = { .fd = r->events, .events = POLLIN };
	__u64 pending = 0;
	ssize_t n;

	for (;;) {
		switch (r->kind) {
		case BY_READ:
			n = read(r->events, ev, sizeof(ev));
			if (n <= 0)
				return NULL;
			take_events(r, ev, n / sizeof(ev[0]), NULL, bufs);
			break;
		case BY_POLL_AND_RESOLVE:
			if (poll(&pfd, 1, -1) != 1) {
				r->error = errno;
				return NULL;
			}
			if (!(pfd.revents & POLLIN))
				return NULL;
			/* Another resolver may have taken it: no event, no wait. */
			if (resolve(r->ml, NULL, 0, ev, MUSERLOAD_RESOLVE_NONBLOCK, &res)) {
				r->error = errno;
				return NULL;
			}
			take_events(r, ev, res.nr_events, NULL, bufs);
			break;
		case BY_RESOLVE:
			/* Loads what the last call read, then waits for the next events. */
			if (resolve(r->ml, vec, pending, ev, 0, &res)) {
				r->error = errno;
				return NULL;
			}
			if (res.load.loaded != pending * PAGE)
				r->error = EIO;
			if (!res.nr_events)
				return NULL;
			take_events(r, ev, res.nr_events, vec, bufs);
			pending = res.nr_events;
			break;
		}
	}
}

#define FAULTERS 8
#define RESOLVERS 4

struct faulter {
	struct ml *ml;
	pthread_t thread;
	int first;
	int wrong;
};

/* Touches every FAULTERS-th page from page @first on and checks what it reads. */
static void *fault_pages_main(void *arg)
{
	struct faulter *f = arg;
	int page;

	for (page = f->first; page < GUEST_PAGES; page += FAULTERS) {
		volatile char *addr = f->ml->guest + page * PAGE;

		(void)*addr;
		f->wrong += !ml_check((const void *)addr, page);
	}
	return NULL;
}

/*
 * Several resolvers on one events descriptor (read, poll, RESOLVE) serve
 * FAULTERS threads: every event goes to exactly one of them, every page
 * arrives once and right.
 */
TEST_F(queue, many_resolvers)
{
	struct ml *ml = &self->ml;
	struct multi_resolver r[RESOLVERS];
	struct faulter f[FAULTERS];
	unsigned int seen[GUEST_PAGES] = { 0 };
	enum resolver_kind kinds[RESOLVERS] = {
		BY_READ, BY_READ, BY_POLL_AND_RESOLVE, BY_RESOLVE };
	unsigned long served = 0;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	int i;

	ASSERT_LE(0, events);
	for (i = 0; i < RESOLVERS; i++) {
		r[i] = (struct multi_resolver){
			.ml = ml, .events = events, .kind = kinds[i], .seen = seen };
		ASSERT_EQ(0, pthread_create(&r[i].thread, NULL, multi_resolver_main, &r[i]));
	}
	for (i = 0; i < FAULTERS; i++) {
		f[i] = (struct faulter){ .ml = ml, .first = i };
		ASSERT_EQ(0, pthread_create(&f[i].thread, NULL, fault_pages_main, &f[i]));
	}
	for (i = 0; i < FAULTERS; i++) {
		ASSERT_EQ(0, pthread_join(f[i].thread, NULL));
		EXPECT_EQ(0, f[i].wrong) TH_LOG("faulter %d read wrong pages", i);
	}
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ABORT));
	for (i = 0; i < RESOLVERS; i++) {
		ASSERT_EQ(0, pthread_join(r[i].thread, NULL));
		EXPECT_EQ(0, r[i].error) TH_LOG("resolver %d: %s", i, strerror(r[i].error));
		served += r[i].served;
	}
	EXPECT_EQ(GUEST_PAGES, served);
	for (i = 0; i < GUEST_PAGES; i++) {
		unsigned int events_of_page = seen[i];

		EXPECT_EQ(1, events_of_page) TH_LOG("page %d: %u events", i, events_of_page);
	}
	close(events);
}

struct waiting_call {
	struct ml *ml;
	pthread_t thread;
	int events;		/* >= 0: read() it, else RESOLVE */
	int nonblock;		/* RESOLVE's NONBLOCK */
	int ret;		/* 0 or errno */
	__u32 nr_events;
	volatile int done;
};

/* One read() or RESOLVE that reads events only, and how it ended. */
static void *waiting_call_main(void *arg)
{
	struct waiting_call *c = arg;
	struct muserload_event ev[4];
	struct muserload_resolve res;
	ssize_t n;

	if (c->events >= 0) {
		n = read(c->events, ev, sizeof(ev));
		c->ret = n < 0 ? errno : 0;
		c->nr_events = n < 0 ? 0 : n / sizeof(ev[0]);
	} else {
		c->ret = -resolve(c->ml, NULL, 0, ev,
				  c->nonblock ? MUSERLOAD_RESOLVE_NONBLOCK : 0, &res);
		c->nr_events = res.nr_events;
	}
	c->done = 1;
	return NULL;
}

/* Waits up to 2 s for @c to end; returns whether it did. */
static int ended_soon(struct waiting_call *c)
{
	int i;

	for (i = 0; i < 200 && !c->done; i++)
		usleep(10000);
	return c->done;
}

/*
 * A reader asleep waiting for events holds nothing that another needs: a
 * nonblocking read or RESOLVE beside it answers at once, and a second
 * sleeping reader is interruptible.
 */
TEST_F(queue, readers_beside_a_sleeper)
{
	struct ml *ml = &self->ml;
	struct sigaction sa = { .sa_handler = noop_handler };
	struct waiting_call sleeper = { .ml = ml, .events = -1 };
	struct waiting_call second = { .ml = ml, .events = -1 };
	struct waiting_call nonblock = { .ml = ml, .events = -1, .nonblock = 1 };
	struct waiting_call nonblock_read = { .ml = ml };
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);

	ASSERT_LE(0, events);
	nonblock_read.events = events;
	/* No SA_RESTART: an interrupted wait ends the call with EINTR. */
	ASSERT_EQ(0, sigaction(SIGUSR2, &sa, NULL));
	ASSERT_EQ(0, pthread_create(&sleeper.thread, NULL, waiting_call_main, &sleeper));
	ASSERT_EQ(0, pthread_create(&second.thread, NULL, waiting_call_main, &second));
	usleep(200000);
	EXPECT_FALSE(sleeper.done);

	/* In threads: before the fix they hung, uninterruptibly, for as long as the sleeper. */
	ASSERT_EQ(0, pthread_create(&nonblock_read.thread, NULL, waiting_call_main,
				    &nonblock_read));
	EXPECT_TRUE(ended_soon(&nonblock_read)) TH_LOG("a nonblocking read() waited");
	EXPECT_EQ(EAGAIN, nonblock_read.ret);
	ASSERT_EQ(0, pthread_create(&nonblock.thread, NULL, waiting_call_main, &nonblock));
	EXPECT_TRUE(ended_soon(&nonblock)) TH_LOG("a nonblocking RESOLVE waited");
	EXPECT_EQ(0, nonblock.ret);
	EXPECT_EQ(0, nonblock.nr_events);

	pthread_kill(second.thread, SIGUSR2);
	EXPECT_TRUE(ended_soon(&second)) TH_LOG("a waiting reader ignored a signal");
	EXPECT_EQ(EINTR, second.ret);
	pthread_kill(sleeper.thread, SIGUSR2);
	EXPECT_TRUE(ended_soon(&sleeper)) TH_LOG("a waiting reader ignored a signal");
	EXPECT_EQ(EINTR, sleeper.ret);

	/* Whatever the outcome, ABORT ends every call still waiting. */
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ABORT));
	pthread_join(sleeper.thread, NULL);
	pthread_join(second.thread, NULL);
	pthread_join(nonblock.thread, NULL);
	pthread_join(nonblock_read.thread, NULL);
	close(events);
}

/* A read whose buffer ends at an unmapped page delivers what fits; the rest stays queued. */
TEST_F(queue, read_short_on_fault)
{
	struct ml *ml = &self->ml;
	struct toucher t1 = { .addr = ml->guest + 1 * PAGE };
	struct toucher t2 = { .addr = ml->guest + 2 * PAGE };
	struct muserload_event ev[2], *edge;
	char *two = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);

	ASSERT_LE(0, events);
	ASSERT_NE(MAP_FAILED, two);
	ASSERT_EQ(0, mprotect(two + PAGE, PAGE, PROT_NONE));
	edge = (struct muserload_event *)(two + PAGE) - 1;
	ASSERT_EQ(0, pthread_create(&t1.thread, NULL, touch_main, &t1));
	ASSERT_EQ(0, pthread_create(&t2.thread, NULL, touch_main, &t2));
	ASSERT_EQ(2, ml_wait_for_waiters(ml, 2));
	EXPECT_EQ(sizeof(ev[0]), read(events, edge, sizeof(ev)));
	EXPECT_EQ(sizeof(ev[0]), read(events, ev, sizeof(ev)));
	/* Both pages' events came, once each. */
	EXPECT_EQ(3 * PAGE, edge->offset + ev[0].offset);
	EXPECT_NE(edge->offset, ev[0].offset);
	ASSERT_EQ(0, ml_load(ml, ml->guest + PAGE, NULL, 2 * PAGE, MUSERLOAD_LOAD_ZERO, NULL));
	ASSERT_EQ(0, pthread_join(t1.thread, NULL));
	ASSERT_EQ(0, pthread_join(t2.thread, NULL));
	munmap(two, 2 * PAGE);
	close(events);
}

/* RESOLVE with a malformed pair after a good one: EINVAL, nothing loaded, no event read. */
TEST_F(queue, resolve_bad_shape_loads_nothing)
{
	struct ml *ml = &self->ml;
	char buf[PAGE] __attribute__((aligned(8)));
	struct muserload_vec vec[2] = {
		{ (uintptr_t)ml->guest + 4 * PAGE, (uintptr_t)buf, PAGE },
		{ (uintptr_t)ml->guest + 5 * PAGE + 16, (uintptr_t)buf, PAGE },
	};
	struct muserload_event ev[4];
	struct muserload_resolve res;
	struct muserload_stats st;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);

	ASSERT_LE(0, events);
	ml_fill(buf, 4);
	EXPECT_EQ(-EINVAL, resolve(ml, vec, 2, ev, MUSERLOAD_RESOLVE_NONBLOCK, &res));
	EXPECT_EQ(0, res.load.loaded);
	EXPECT_EQ(0, res.nr_events);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(0, st.loads_copy);
	EXPECT_EQ(GUEST_PAGES, st.unloaded);
	close(events);
}

/* Reads @arg's page through process_vm_readv(), GUP for "another" task that may wait. */
static void *remote_read_main(void *arg)
{
	struct toucher *t = arg;
	uint64_t word;
	struct iovec local = { &word, sizeof(word) };
	struct iovec remote = { (void *)t->addr, sizeof(word) };

	/* t->write: the call's errno, 0 if it read the word. */
	if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == sizeof(word))
		t->word = word;
	else
		t->write = errno;
	return NULL;
}

/*
 * GUP for another task: /proc/pid/mem cannot wait (its GUP may not drop the mmap lock)
 * and fails at once with EIO, queueing nothing; process_vm_readv() can, and waits like
 * any kernel-mode access, with an event.
 */
TEST_F(queue, remote_access)
{
	struct ml *ml = &self->ml;
	struct toucher t = { .addr = ml->guest + 6 * PAGE };
	struct muserload_event ev;
	struct muserload_stats st;
	char buf[PAGE] __attribute__((aligned(8)));
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	int mem = open("/proc/self/mem", O_RDONLY);
	uint64_t word;

	ASSERT_LE(0, events);
	ASSERT_LE(0, mem);
	EXPECT_EQ(-1, pread(mem, &word, sizeof(word), (uintptr_t)ml->guest + 6 * PAGE));
	EXPECT_EQ(EIO, errno);
	EXPECT_EQ(-1, read(events, &ev, sizeof(ev)));
	EXPECT_EQ(EAGAIN, errno);

	ASSERT_EQ(0, pthread_create(&t.thread, NULL, remote_read_main, &t));
	ASSERT_EQ(1, ml_wait_for_waiters(ml, 1)) TH_LOG("process_vm_readv: %s", strerror(t.write));
	ASSERT_EQ(sizeof(ev), read(events, &ev, sizeof(ev)));
	EXPECT_EQ(6 * PAGE, ev.offset);
	EXPECT_EQ(MUSERLOAD_EVENT_KERNEL, ev.flags);
	ml_fill(buf, 6);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 6 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ASSERT_EQ(0, pthread_join(t.thread, NULL));
	EXPECT_EQ(((uint64_t *)buf)[0], t.word);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_queue_kernel);
	/* Loaded now: /proc/pid/mem reads it. */
	EXPECT_EQ(sizeof(word), pread(mem, &word, sizeof(word), (uintptr_t)ml->guest + 6 * PAGE));
	EXPECT_EQ(((uint64_t *)buf)[0], word);
	close(mem);
	close(events);
}

TEST_F(queue, bad_event_flags)
{
	EXPECT_EQ(-1, ioctl(self->ml.fd, MUSERLOAD_IOC_EVENTS, 1));
	EXPECT_EQ(EINVAL, errno);
}

#define RACERS 8

/* N threads on one page: one event, all of them woken by one load. */
TEST_F(queue, one_event_per_page)
{
	struct ml *ml = &self->ml;
	struct toucher t[RACERS];
	struct muserload_event ev[4];
	struct muserload_stats st;
	struct pollfd pfd;
	char buf[PAGE] __attribute__((aligned(8)));
	int events, i, epfd;
	struct epoll_event eev = { .events = EPOLLIN };

	events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, events);
	epfd = epoll_create1(0);
	ASSERT_LE(0, epfd);
	ASSERT_EQ(0, epoll_ctl(epfd, EPOLL_CTL_ADD, events, &eev));
	for (i = 0; i < RACERS; i++) {
		t[i] = (struct toucher){ .addr = ml->guest + 9 * PAGE + i * 8 };
		ASSERT_EQ(0, pthread_create(&t[i].thread, NULL, touch_main, &t[i]));
	}
	ASSERT_EQ(1, epoll_wait(epfd, &eev, 1, 10000));
	/* Let every racer reach its wait. */
	EXPECT_EQ(RACERS, ml_wait_for_waiters(ml, RACERS));
	ASSERT_EQ(sizeof(ev[0]), read(events, ev, sizeof(ev)));
	pfd = (struct pollfd){ .fd = events, .events = POLLIN };
	EXPECT_EQ(0, poll(&pfd, 1, 0));
	ml_fill(buf, 9);
	ASSERT_EQ(0, ml_load(ml, ml->guest + 9 * PAGE, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	for (i = 0; i < RACERS; i++) {
		ASSERT_EQ(0, pthread_join(t[i].thread, NULL));
		EXPECT_EQ(((uint64_t *)buf)[i], t[i].word);
	}
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_queue_user);
	EXPECT_EQ(0, st.waiters);
	close(epfd);
	close(events);
}

/* Many pages, a resolver thread: everything arrives with the right content. */
TEST_F(queue, resolver_serves_all)
{
	struct ml *ml = &self->ml;
	struct ml_resolver r;
	int i;

	ASSERT_EQ(0, ml_resolver_start(&r, ml));
	for (i = 0; i < GUEST_PAGES; i++)
		ASSERT_TRUE(ml_check(ml->guest + i * PAGE, i));
	/* The resolver counts a page after the load that woke us: join it first. */
	ml_resolver_stop(&r);
	EXPECT_EQ(GUEST_PAGES, r.served);
}

/* The kernel touching an unloaded page for the task (read() into it) waits too. */
TEST_F(queue, kernel_mode_access)
{
	struct ml *ml = &self->ml;
	struct ml_resolver r;
	struct muserload_stats st;
	char buf[64];
	int p[2];

	ASSERT_EQ(0, ml_resolver_start(&r, ml));
	ASSERT_EQ(0, pipe(p));
	memset(buf, 0x11, sizeof(buf));
	ASSERT_EQ(sizeof(buf), write(p[1], buf, sizeof(buf)));
	/* copy_to_user into page 3, copy_from_user out of page 4. */
	ASSERT_EQ(sizeof(buf), read(p[0], ml->guest + 3 * PAGE, sizeof(buf)));
	ASSERT_EQ(0, memcmp(ml->guest + 3 * PAGE, buf, sizeof(buf)));
	ASSERT_EQ(sizeof(buf), write(p[1], ml->guest + 4 * PAGE, sizeof(buf)));
	ASSERT_EQ(sizeof(buf), read(p[0], buf, sizeof(buf)));
	ASSERT_EQ(0, memcmp(ml->guest + 4 * PAGE, buf, sizeof(buf)));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(2, st.faults_queue_kernel);
	ml_resolver_stop(&r);
	close(p[0]);
	close(p[1]);
}

/* Closing the events descriptor (the resolver going away) wakes waiters with SIGBUS. */
TEST_F(queue, resolver_close_sigbus)
{
	struct ml *ml = &self->ml;
	struct muserload_event ev;
	int events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, 0);
	int status;
	pid_t pid;

	ASSERT_LE(0, events);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		/* The resolver is gone only once every copy of its descriptor is closed. */
		close(events);
		(void)*(volatile char *)(ml->guest + 2 * PAGE);
		_exit(0);
	}
	ASSERT_EQ(sizeof(ev), read(events, &ev, sizeof(ev)));
	EXPECT_EQ(2 * PAGE, ev.offset);
	ASSERT_EQ(0, close(events));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGBUS, WTERMSIG(status));
	/* Later faults on unloaded pages get SIGBUS at once. */
	pid = ml_fork_toucher(ml->guest + 3 * PAGE);
	ASSERT_LE(0, pid);
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGBUS, WTERMSIG(status));
}

/* ABORT with threads waiting. */
TEST_F(queue, abort_wakes_with_sigbus)
{
	struct ml *ml = &self->ml;
	int status;
	pid_t pid;

	pid = ml_fork_toucher(ml->guest + 7 * PAGE);
	ASSERT_LE(0, pid);
	ASSERT_EQ(1, ml_wait_for_waiters(ml, 1));
	ASSERT_EQ(0, ioctl(ml->fd, MUSERLOAD_IOC_ABORT));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGBUS, WTERMSIG(status));
}

/* A waiting thread can be killed. */
TEST_F(queue, kill_while_waiting)
{
	struct ml *ml = &self->ml;
	int status;
	pid_t pid;

	pid = ml_fork_toucher(ml->guest + 8 * PAGE);
	ASSERT_LE(0, pid);
	ASSERT_EQ(1, ml_wait_for_waiters(ml, 1));
	ASSERT_EQ(0, kill(pid, SIGKILL));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSIGNALED(status));
	EXPECT_EQ(SIGKILL, WTERMSIG(status));
	EXPECT_EQ(0, ml_wait_for_waiters(ml, 0));
}

#define RACE_PAGES 4

struct rearm_race {
	struct ml *ml;
	volatile int stop;
};

/* Arms the race's pages again and again: loaded ones are discarded. */
static void *rearm_loop(void *arg)
{
	struct rearm_race *r = arg;
	int i = 0;

	while (!r->stop) {
		ml_arm(r->ml, r->ml->guest + i * PAGE, PAGE, 0);
		i = (i + 1) % RACE_PAGES;
	}
	return NULL;
}

/* In a child: touches the race's pages until told to stop (a shared flag), then exits 0. */
static int touch_until_stopped(struct ml *ml, volatile int *stop)
{
	int i = 0;

	while (!*stop) {
		(void)*(volatile char *)(ml->guest + i * PAGE);
		i = (i + 1) % RACE_PAGES;
	}
	return 0;
}

/*
 * A page loaded and armed again between a fault queueing its event and
 * sleeping has no event any more: the fault must not sleep for it, or it
 * sleeps for good (found by the fuzzer). Touchers in a child, a resolver and
 * re-arms race; then the touchers must all stop within seconds.
 */
TEST_F_TIMEOUT(queue, rearm_before_sleep, 60)
{
	struct rearm_race r = { .ml = &self->ml };
	volatile int *stop = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct ml_resolver res;
	pthread_t arm[2];
	int i, status = 0;
	pid_t pid[2];

	ASSERT_NE(MAP_FAILED, stop);
	ASSERT_EQ(0, ml_resolver_start(&res, &self->ml));
	for (i = 0; i < 2; i++) {
		pid[i] = fork();
		ASSERT_LE(0, pid[i]);
		if (pid[i] == 0)
			_exit(touch_until_stopped(&self->ml, stop));
	}
	for (i = 0; i < 2; i++)
		ASSERT_EQ(0, pthread_create(&arm[i], NULL, rearm_loop, &r));
	sleep(8);
	r.stop = 1;
	for (i = 0; i < 2; i++)
		pthread_join(arm[i], NULL);
	*stop = 1;
	/* The pages are no longer re-armed: every touch completes at the next load. */
	for (i = 0; i < 500 && waitpid(pid[0], &status, WNOHANG) == 0; i++)
		usleep(10000);
	EXPECT_TRUE(i < 500) TH_LOG("a toucher is still asleep");
	for (i = 0; i < 500 && waitpid(pid[1], &status, WNOHANG) == 0; i++)
		usleep(10000);
	EXPECT_TRUE(i < 500) TH_LOG("a toucher is still asleep");
	/* Aborting ends any toucher left asleep (SIGBUS). */
	ml_resolver_stop(&res);
	waitpid(pid[0], &status, 0);
	waitpid(pid[1], &status, 0);
}

TEST_HARNESS_MAIN
