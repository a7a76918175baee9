// SPDX-License-Identifier: GPL-2.0
/*
 * Isolation: another process, and an unprivileged user, can neither load into,
 * read nor wait on someone else's object; a descriptor passed with SCM_RIGHTS
 * is the object itself; new pages, zero loads and staging refills read zeros
 * whatever memory held before; and a memory cgroup's limit fails loads and
 * setups with ENOMEM instead of running the cgroup's OOM killer.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define PAGES 16
#define NOBODY 65534

/* Runs @fn(@arg) in a child and returns its exit code, or 128 + the signal that killed it. */
static int in_child(int (*fn)(void *), void *arg)
{
	int status;
	pid_t pid = fork();

	if (pid == 0)
		_exit(fn(arg));
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* What a child needs to know of its parent's object. */
struct victim {
	pid_t pid;
	int fd;
	int events;
	char *guest;
};

static int drop_privileges(void)
{
	return setgid(NOBODY) || setuid(NOBODY);
}

/*
 * A process that did not inherit the object names the parent's addresses with
 * its own object: the module finds no mapping of its object there.
 */
static int name_others_addresses(void *arg)
{
	struct victim *v = arg;
	struct ml mine;
	struct muserload_load load = {
		.dst = (uintptr_t)v->guest,
		.len = PAGE,
		.mode = MUSERLOAD_LOAD_ZERO,
	};

	/*
	 * As if the parent's mapping were never inherited: other memory at its
	 * address, so that this child's own object is not mapped there either.
	 */
	if (mmap(v->guest, PAGES * PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != v->guest)
		return 14;
	if (ml_open(&mine, PAGES * PAGE, 0))
		return 10;
	if (ml_arm(&mine, v->guest, PAGE, 0) != -EFAULT)
		return 11;
	if (!ioctl(mine.fd, MUSERLOAD_IOC_LOAD, &load) || errno != EFAULT)
		return 12;
	load.mode = MUSERLOAD_LOAD_WAKE;
	if (!ioctl(mine.fd, MUSERLOAD_IOC_LOAD, &load) || errno != EFAULT)
		return 13;
	return 0;
}

FIXTURE(iso)
{
	struct ml ml;
	struct victim v;
};

FIXTURE_SETUP(iso)
{
	ASSERT_EQ(0, ml_open(&self->ml, PAGES * PAGE, PAGES * PAGE));
	ml_fill(self->ml.guest, 7);
	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest + PAGE, (PAGES - 1) * PAGE, 0));
	self->v.pid = getpid();
	self->v.fd = self->ml.fd;
	self->v.events = ioctl(self->ml.fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_NONBLOCK);
	ASSERT_LE(0, self->v.events);
	self->v.guest = self->ml.guest;
}

FIXTURE_TEARDOWN(iso)
{
	close(self->v.events);
	ml_close(&self->ml);
}

TEST_F(iso, other_process_names_nothing)
{
	struct muserload_stats st;

	EXPECT_EQ(0, in_child(name_others_addresses, &self->v));
	ASSERT_EQ(0, ml_stats(&self->ml, &st));
	EXPECT_EQ(PAGES - 1, st.unloaded);
	EXPECT_EQ(0, st.loads_zero + st.wakes);
}

/*
 * Reopening the parent's descriptor through /proc opens the device afresh: a
 * new, separate object, not the parent's.
 */
static int reopen_through_proc(void *arg)
{
	struct victim *v = arg;
	struct muserload_setup setup = { .size = PAGES * PAGE };
	char path[64], *p;
	int fd, events;

	snprintf(path, sizeof(path), "/proc/%d/fd/%d", v->pid, v->fd);
	fd = open(path, O_RDWR);
	if (fd < 0)
		return 20;
	/* Not set up: it is not the parent's object. */
	if (mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0) != MAP_FAILED || errno != EINVAL)
		return 21;
	if (ioctl(fd, MUSERLOAD_IOC_SETUP, &setup))
		return 22;
	/* The parent's object has an events descriptor; this one can have its own. */
	events = ioctl(fd, MUSERLOAD_IOC_EVENTS, 0);
	if (events < 0)
		return 23;
	p = mmap(NULL, PAGES * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED || !ml_is_zero(p))
		return 24;
	return 0;
}

TEST_F(iso, reopen_is_a_new_object)
{
	EXPECT_EQ(0, in_child(reopen_through_proc, &self->v));
}

/*
 * An unprivileged user cannot reach the object at all: not its descriptors,
 * not its memory.
 */
static int unprivileged_reach(void *arg)
{
	struct victim *v = arg;
	char path[64], buf[64];
	int pidfd, fd;

	if (drop_privileges())
		return 30;
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", v->pid, v->fd);
	if (open(path, O_RDWR) >= 0)
		return 31;
	pidfd = syscall(SYS_pidfd_open, v->pid, 0);
	if (pidfd < 0)
		return 32;
	if (syscall(SYS_pidfd_getfd, pidfd, v->fd, 0) >= 0 || errno != EPERM)
		return 33;
	if (syscall(SYS_pidfd_getfd, pidfd, v->events, 0) >= 0 || errno != EPERM)
		return 34;
	/* The guest memory, through /proc/PID/mem (process_vm_readv() is not built). */
	snprintf(path, sizeof(path), "/proc/%d/mem", v->pid);
	fd = open(path, O_RDONLY);
	if (fd >= 0 && pread(fd, buf, sizeof(buf), (uintptr_t)v->guest) >= 0)
		return 36;
	return 0;
}

TEST_F(iso, unprivileged_user_reaches_nothing)
{
	EXPECT_EQ(0, in_child(unprivileged_reach, &self->v));
}

/* The unprivileged user's own objects work, and are no one else's. */
static int unprivileged_own_object(void *arg)
{
	struct victim *v = arg;
	char buf[PAGE] __attribute__((aligned(8)));
	struct ml ml;

	if (drop_privileges())
		return 40;
	if (ml_open(&ml, PAGES * PAGE, PAGES * PAGE))
		return 41;
	if (ml_arm(&ml, ml.guest, PAGES * PAGE, 0) || ml_arm(&ml, v->guest, PAGE, 0) != -EFAULT)
		return 42;
	ml_fill(buf, 3);
	if (ml_load(&ml, ml.guest, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL) ||
	    !ml_check(ml.guest, 3))
		return 43;
	return 0;
}

TEST_F(iso, unprivileged_user_own_object)
{
	EXPECT_EQ(0, in_child(unprivileged_own_object, &self->v));
}

static int send_fds(int sock, int *fds, int n)
{
	char data = 'x', control[CMSG_SPACE(2 * sizeof(int))] = { 0 };
	struct iovec iov = { &data, 1 };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control,
		.msg_controllen = CMSG_SPACE(n * sizeof(int)),
	};
	struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);

	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(n * sizeof(int));
	memcpy(CMSG_DATA(cmsg), fds, n * sizeof(int));
	return sendmsg(sock, &msg, 0) == 1 ? 0 : -1;
}

static int recv_fds(int sock, int *fds, int n)
{
	char data, control[CMSG_SPACE(2 * sizeof(int))];
	struct iovec iov = { &data, 1 };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control,
		.msg_controllen = sizeof(control),
	};
	struct cmsghdr *cmsg;

	if (recvmsg(sock, &msg, 0) != 1)
		return -1;
	cmsg = CMSG_FIRSTHDR(&msg);
	if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS || cmsg->cmsg_len != CMSG_LEN(n * sizeof(int)))
		return -1;
	memcpy(fds, CMSG_DATA(cmsg), n * sizeof(int));
	return 0;
}

/*
 * A process that received the object's descriptor and its events descriptor
 * with SCM_RIGHTS holds the object itself: it maps the same pages, serves the
 * parent's fault and loads into the parent's memory.
 */
static int received_resolver(int sock)
{
	char buf[PAGE] __attribute__((aligned(8)));
	struct muserload_event ev;
	int fds[2], tries;
	struct ml ml = { .size = PAGES * PAGE };
	ssize_t n = -1;

	if (recv_fds(sock, fds, 2))
		return 50;
	ml.fd = fds[0];
	ml.guest = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, ml.fd, 0);
	if (ml.guest == MAP_FAILED || !ml_check(ml.guest, 7))
		return 51;
	for (tries = 0; tries < 500 && n < 0; tries++) {
		n = read(fds[1], &ev, sizeof(ev));
		if (n < 0)
			usleep(10000);
	}
	if (n != sizeof(ev) || ev.offset != 2 * PAGE)
		return 52;
	ml_fill(buf, 9);
	if (ml_load(&ml, ml.guest + ev.offset, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL))
		return 53;
	/* Tell the parent that this side is done; keep the descriptors until it answers. */
	if (write(sock, "y", 1) != 1 || read(sock, buf, 1) != 1)
		return 54;
	return 0;
}

TEST_F(iso, scm_rights_passes_the_object)
{
	int sv[2], fds[2], status;
	char c;
	pid_t pid;

	ASSERT_EQ(0, socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
	/* Forked before it learns of the object: all it has comes through the socket. */
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		close(sv[0]);
		munmap(self->ml.guest, PAGES * PAGE);
		munmap(self->ml.staging, PAGES * PAGE);
		close(self->ml.fd);
		close(self->v.events);
		_exit(received_resolver(sv[1]));
	}
	close(sv[1]);
	fds[0] = self->ml.fd;
	fds[1] = self->v.events;
	ASSERT_EQ(0, send_fds(sv[0], fds, 2));
	/* Our copy of the events descriptor goes: the child's keeps the object alive. */
	close(self->v.events);
	self->v.events = -1;
	/* Waits until the child, the only resolver left, loads it. */
	EXPECT_TRUE(ml_check(self->ml.guest + 2 * PAGE, 9));
	ASSERT_EQ(1, read(sv[0], &c, 1));
	ASSERT_EQ(1, write(sv[0], "y", 1));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
	close(sv[0]);
}

/* Fill a lot of memory with a pattern, then free it: later pages must not show it. */
static void dirty_memory(struct __test_metadata *_metadata)
{
	struct ml ml;
	size_t i;

	ASSERT_EQ(0, ml_open(&ml, 1024 * PAGE, 256 * PAGE));
	for (i = 0; i < 1024; i++)
		memset(ml.guest + i * PAGE, 0xa5, PAGE);
	for (i = 0; i < 256; i++)
		memset(ml.staging + i * PAGE, 0x5a, PAGE);
	ml_close(&ml);
}

TEST(fresh_pages_read_zero)
{
	struct ml ml;
	int round, i;

	for (round = 0; round < 4; round++) {
		dirty_memory(_metadata);
		ASSERT_EQ(0, ml_open(&ml, 256 * PAGE, 64 * PAGE));
		/* Empty guest pages, zero loads, untouched staging moved. */
		for (i = 0; i < 64; i++)
			ASSERT_TRUE(ml_is_zero(ml.guest + i * PAGE));
		ASSERT_EQ(0, ml_arm(&ml, ml.guest + 64 * PAGE, 192 * PAGE, 0));
		ASSERT_EQ(0, ml_load(&ml, ml.guest + 64 * PAGE, NULL, 64 * PAGE,
				     MUSERLOAD_LOAD_ZERO, NULL));
		ASSERT_EQ(0, ml_load(&ml, ml.guest + 128 * PAGE, ml.staging, 64 * PAGE,
				     MUSERLOAD_LOAD_MOVE, NULL));
		for (i = 64; i < 192; i++)
			ASSERT_TRUE(ml_is_zero(ml.guest + i * PAGE));
		/*
		 * Staging refills, one page at a time and in a batch: from the
		 * pool, and zeroed by the caller once the pool runs dry.
		 */
		for (i = 0; i < 64; i++) {
			ml_fill(ml.staging + i * PAGE, i + 1);
			ASSERT_EQ(0, ml_load(&ml, ml.guest + (192 + i) * PAGE, ml.staging + i * PAGE,
					     PAGE, MUSERLOAD_LOAD_MOVE, NULL));
			ASSERT_TRUE(ml_is_zero(ml.staging + i * PAGE));
			ASSERT_TRUE(ml_check(ml.guest + (192 + i) * PAGE, i + 1));
		}
		for (i = 0; i < 64; i++)
			ml_fill(ml.staging + i * PAGE, i + 1);
		ASSERT_EQ(0, ml_arm(&ml, ml.guest, 64 * PAGE, 0));
		ASSERT_EQ(0, ml_load(&ml, ml.guest, ml.staging, 64 * PAGE, MUSERLOAD_LOAD_MOVE, NULL));
		for (i = 0; i < 64; i++)
			ASSERT_TRUE(ml_is_zero(ml.staging + i * PAGE));
		/* A discarded page zero-loaded again shows zeros, not what it held. */
		ASSERT_EQ(0, ml_arm(&ml, ml.guest, PAGE, 0));
		ASSERT_EQ(0, ml_load(&ml, ml.guest, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL));
		ASSERT_TRUE(ml_is_zero(ml.guest));
		ml_close(&ml);
	}
}

#define CGROUP "/sys/fs/cgroup/muserload-isolation"
#define LIMIT (16UL << 20)

#define REGION (2UL << 20)
#define REGION_PAGES (REGION / PAGE)

/*
 * In the limited cgroup: loads until the limit refuses one with ENOMEM, which
 * must come before the limit is passed; what loaded before is intact. A MOVE
 * that needs new pages, and a setup bigger than the limit, fail with ENOMEM
 * too. The page tables that map loaded pages are the kernel's, charged as
 * usual (past the limit, by the OOM killer): they are made before joining the
 * cgroup, by touching the first page of each page table's 2 MiB.
 */
static int load_past_the_limit(void *arg)
{
	struct muserload_setup setup = { .size = 1UL << 36 };
	size_t size = 4 * LIMIT, off, first, prev, end, loaded_bytes = 0, checked = 0;
	char pid[32], *src;
	__u64 loaded = 0;
	struct ml ml;
	int ret = 0, fd;

	src = mmap(NULL, REGION, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (src == MAP_FAILED || ml_open(&ml, size, PAGES * PAGE))
		return 60;
	memset(src, 0x5a, REGION);
	/* The page before each 2 MiB boundary too: the first one may not be aligned. */
	first = (REGION - (uintptr_t)ml.guest % REGION) % REGION;
	ml.guest[0] = 1;
	for (off = first; off < size; off += REGION)
		ml.guest[off] = 1;
	snprintf(pid, sizeof(pid), "%d", getpid());
	if (ml_write_file(CGROUP "/cgroup.procs", pid))
		return 61;
	/* Every page but the touched ones, a region at a time. */
	prev = 0;
	for (off = first ? first : REGION; !ret && prev < size; off += REGION) {
		end = off < size ? off : size;
		if (end > prev + PAGE) {
			ret = ml_load(&ml, ml.guest + prev + PAGE, src, end - prev - PAGE,
				      MUSERLOAD_LOAD_COPY, &loaded);
			/* The first page loaded: a touched one holds 1, not the pattern. */
			if (!checked && loaded)
				checked = prev + PAGE;
			loaded_bytes += loaded;
			if (ret && ret != -ENOMEM)
				return 62;
		}
		prev = end;
	}
	if (ret != -ENOMEM || loaded_bytes > LIMIT)
		return 63;
	/* MOVE of staging never touched needs pages too. */
	if (ml_load(&ml, ml.guest + size - PAGE, ml.staging, PAGE, MUSERLOAD_LOAD_MOVE,
		    NULL) != -ENOMEM)
		return 64;
	if (!checked || ml.guest[checked] != 0x5a)
		return 65;
	ml_close(&ml);
	/* 2^24 pages: 192 MiB of page arrays. */
	fd = open(MUSERLOAD_DEV, O_RDWR);
	if (fd < 0)
		return 66;
	if (!ioctl(fd, MUSERLOAD_IOC_SETUP, &setup) || errno != ENOMEM)
		return 67;
	close(fd);
	return 0;
}

TEST(memcg_limit_fails_loads)
{
	char max[32];

	ASSERT_EQ(0, ml_write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory"));
	ASSERT_TRUE(mkdir(CGROUP, 0755) == 0 || errno == EEXIST);
	snprintf(max, sizeof(max), "%lu", LIMIT);
	ASSERT_EQ(0, ml_write_file(CGROUP "/memory.max", max));
	EXPECT_EQ(0, in_child(load_past_the_limit, NULL));
	EXPECT_EQ(0, ml_read_key(CGROUP "/memory.events", "oom_kill"));
	EXPECT_EQ(0, rmdir(CGROUP));
}

TEST_HARNESS_MAIN
