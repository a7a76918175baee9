/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the muserload selftests: an object set up and mapped, page
 * patterns, loads, and a resolver thread for queue mode.
 */
#ifndef MUSERLOAD_UTIL_H
#define MUSERLOAD_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/muserload.h>

#define MUSERLOAD_DEV "/dev/muserload"
#define PAGE 4096UL

struct ml {
	int fd;
	char *guest;
	char *staging;
	size_t size;
	size_t staging_size;
};

/* Opens, handshakes, sizes and maps an object; returns 0 or -errno. */
static inline int ml_open(struct ml *ml, size_t size, size_t staging_size)
{
	struct muserload_api api = { .api = MUSERLOAD_API };
	struct muserload_setup setup = {
		.size = size,
		.staging_size = staging_size,
	};

	memset(ml, 0, sizeof(*ml));
	ml->size = size;
	ml->staging_size = staging_size;
	ml->fd = open(MUSERLOAD_DEV, O_RDWR | O_CLOEXEC);
	if (ml->fd < 0)
		return -errno;
	if (ioctl(ml->fd, MUSERLOAD_IOC_API, &api) ||
	    ioctl(ml->fd, MUSERLOAD_IOC_SETUP, &setup))
		return -errno;
	ml->guest = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
			 ml->fd, 0);
	if (ml->guest == MAP_FAILED)
		return -errno;
	if (!staging_size)
		return 0;
	ml->staging = mmap(NULL, staging_size, PROT_READ | PROT_WRITE,
			   MAP_SHARED, ml->fd, MUSERLOAD_STAGING_OFFSET);
	if (ml->staging == MAP_FAILED)
		return -errno;
	return 0;
}

static inline void ml_close(struct ml *ml)
{
	if (ml->guest && ml->guest != MAP_FAILED)
		munmap(ml->guest, ml->size);
	if (ml->staging && ml->staging != MAP_FAILED)
		munmap(ml->staging, ml->staging_size);
	if (ml->fd >= 0)
		close(ml->fd);
}

/* Arms [addr, addr + len) with @signal (0: queue mode); returns 0 or -errno. */
static inline int ml_arm(struct ml *ml, void *addr, size_t len, int signal)
{
	struct muserload_arm arm = {
		.start = (uintptr_t)addr,
		.len = len,
		.signal = signal,
	};

	return ioctl(ml->fd, MUSERLOAD_IOC_ARM, &arm) ? -errno : 0;
}

/* One load; returns 0 or -errno, and the bytes done in *@loaded if not NULL. */
static inline int ml_load(struct ml *ml, void *dst, const void *src, size_t len,
			  __u64 mode, __u64 *loaded)
{
	struct muserload_load load = {
		.dst = (uintptr_t)dst,
		.src = (uintptr_t)src,
		.len = len,
		.mode = mode,
	};
	int ret = ioctl(ml->fd, MUSERLOAD_IOC_LOAD, &load) ? -errno : 0;

	if (loaded)
		*loaded = load.loaded;
	return ret;
}

static inline int ml_stats(struct ml *ml, struct muserload_stats *stats)
{
	return ioctl(ml->fd, MUSERLOAD_IOC_STATS, stats) ? -errno : 0;
}

/* Waits up to 5 s for @n threads to wait on the object's pages; returns how many do. */
static inline unsigned long long ml_wait_for_waiters(struct ml *ml, unsigned int n)
{
	struct muserload_stats st = { 0 };
	int i;

	for (i = 0; i < 500; i++) {
		if (ml_stats(ml, &st) || st.waiters >= n)
			break;
		usleep(10000);
	}
	return st.waiters;
}

/* Forks a child that reads the byte at @addr and exits 0; returns its pid. */
static inline pid_t ml_fork_toucher(void *addr)
{
	pid_t pid = fork();

	if (pid == 0) {
		(void)*(volatile char *)addr;
		_exit(0);
	}
	return pid;
}

/* Fills a page with a pattern derived from @seed. */
static inline void ml_fill(void *page, uint64_t seed)
{
	uint64_t *w = page;
	size_t i;

	for (i = 0; i < PAGE / sizeof(*w); i++)
		w[i] = seed * 0x9e3779b97f4a7c15ULL + i;
}

/* Whether a page holds ml_fill(@seed)'s pattern. */
static inline int ml_check(const void *page, uint64_t seed)
{
	const uint64_t *w = page;
	size_t i;

	for (i = 0; i < PAGE / sizeof(*w); i++)
		if (w[i] != seed * 0x9e3779b97f4a7c15ULL + i)
			return 0;
	return 1;
}

/* Writes @text to the file @path (sysfs, cgroupfs, debugfs); 0 or -errno. */
static inline int ml_write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -errno;
}

/*
 * The value of @key in the flat-keyed file @path (memory.stat, memory.events), or -1;
 * with @key "", the number the file holds (memory.current).
 */
static inline long ml_read_key(const char *path, const char *key)
{
	char buf[8192], *line, *save;
	long value = -1;
	ssize_t n;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	if (!*key)
		return atol(buf);
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ' ')
			value = atol(line + strlen(key) + 1);
	return value;
}

/* Fault injection: the @nth allocation of this thread from now on fails (@fail_nth:
 * this thread's /proc/thread-self/fail-nth, open).
 */
static inline void ml_inject(int fail_nth, int nth)
{
	char buf[16];
	int n = snprintf(buf, sizeof(buf), "%d", nth);

	if (pwrite(fail_nth, buf, n, 0) != n)
		return;
}

/* Disarms the injection of ml_inject(); returns whether the failure was injected. */
static inline int ml_injected(int fail_nth)
{
	char buf[16] = { 0 };

	if (pread(fail_nth, buf, sizeof(buf) - 1, 0) < 0 || pwrite(fail_nth, "0", 1, 0) != 1)
		return 0;
	return atoi(buf) == 0;
}

static inline int ml_is_zero(const void *page)
{
	const uint64_t *w = page;
	size_t i;

	for (i = 0; i < PAGE / sizeof(*w); i++)
		if (w[i])
			return 0;
	return 1;
}

/*
 * A queue-mode resolver: reads events from @events and loads each page with
 * COPY of ml_fill(page index), until read() returns 0 (abort) or fails.
 */
struct ml_resolver {
	struct ml *ml;
	int events;
	pthread_t thread;
	/* Pages loaded; read it after ml_resolver_stop(): it is counted after the load. */
	unsigned long served;
};

static inline void *ml_resolver_main(void *arg)
{
	struct ml_resolver *r = arg;
	struct muserload_event ev[16];
	char buf[PAGE] __attribute__((aligned(8)));
	ssize_t n;
	int i;

	while ((n = read(r->events, ev, sizeof(ev))) > 0) {
		for (i = 0; i < n / (ssize_t)sizeof(ev[0]); i++) {
			ml_fill(buf, ev[i].offset / PAGE);
			ml_load(r->ml, r->ml->guest + ev[i].offset, buf, PAGE,
				MUSERLOAD_LOAD_COPY, NULL);
			r->served++;
		}
	}
	return NULL;
}

static inline int ml_resolver_start(struct ml_resolver *r, struct ml *ml)
{
	r->ml = ml;
	r->served = 0;
	r->events = ioctl(ml->fd, MUSERLOAD_IOC_EVENTS, MUSERLOAD_EVENTS_CLOEXEC);
	if (r->events < 0)
		return -errno;
	return -pthread_create(&r->thread, NULL, ml_resolver_main, r);
}

/* Stops the resolver by aborting the object, and joins it. */
static inline void ml_resolver_stop(struct ml_resolver *r)
{
	ioctl(r->ml->fd, MUSERLOAD_IOC_ABORT);
	pthread_join(r->thread, NULL);
	close(r->events);
}

#endif /* MUSERLOAD_UTIL_H */
