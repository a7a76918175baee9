/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * muserload: post-copy memory loading for userspace.
 *
 * This header is the single source of truth of the ABI: the module and the
 * userspace crate generate their Rust definitions from it with bindgen, and
 * the selftests include it as it is. Documentation/muserload.rst describes
 * every ioctl and every errno.
 *
 * Each open of /dev/muserload is a load object. After MUSERLOAD_IOC_SETUP it
 * has two regions, mapped with mmap(MAP_SHARED) at fixed file offsets:
 *  - guest memory at offset 0, MUSERLOAD_IOC_SETUP's size bytes long;
 *  - staging at MUSERLOAD_STAGING_OFFSET, staging_size bytes long: pages
 *    that userspace fills (for example with recv()) and then moves into guest
 *    memory without a copy (MUSERLOAD_LOAD_MOVE).
 * A page of either region that is neither loaded nor armed reads as zeros.
 */
#ifndef _UAPI_LINUX_MUSERLOAD_H
#define _UAPI_LINUX_MUSERLOAD_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The ABI version this header describes; see MUSERLOAD_IOC_API. */
#define MUSERLOAD_API 1

/* ioctl type 0xBD, free in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define MUSERLOAD_IOCTL_BASE 0xBD

/* ioctl numbers, kept as plain constants so that bindgen can see them. */
#define _MUSERLOAD_API 0x00
#define _MUSERLOAD_SETUP 0x01
#define _MUSERLOAD_ARM 0x02
#define _MUSERLOAD_LOAD 0x03
#define _MUSERLOAD_LOADV 0x04
#define _MUSERLOAD_EVENTS 0x05
#define _MUSERLOAD_ABORT 0x06
#define _MUSERLOAD_STATS 0x07
#define _MUSERLOAD_RESOLVE 0x08

/* Where staging starts in the file; guest memory must end below it. */
#define MUSERLOAD_STAGING_OFFSET (1ULL << 44)
/* The most staging one object may have (pages are charged to its memcg). */
#define MUSERLOAD_STAGING_MAX (1ULL << 30)
/* The most pairs one MUSERLOAD_IOC_LOADV may carry. */
#define MUSERLOAD_LOADV_MAX 1024

/*
 * struct muserload_api - the handshake.
 * @api:      in: the ABI version the caller speaks, MUSERLOAD_API.
 *            out: the version the module speaks.
 * @features: in: the MUSERLOAD_FEATURE_* bits the caller needs.
 *            out: every feature bit the module supports.
 *
 * Fails with EINVAL if @api is not a version the module speaks or if @features
 * asks for a bit the module does not support; the module writes its own
 * version and features back in both cases, so a caller can see why.
 */
struct muserload_api {
	__u64 api;
	__u64 features;
};

/* Feature bits of struct muserload_api. */
#define MUSERLOAD_FEATURE_SIGNAL (1ULL << 0)	/* signal mode */
#define MUSERLOAD_FEATURE_QUEUE (1ULL << 1)	/* queue mode, event fd */
#define MUSERLOAD_FEATURE_MOVE (1ULL << 2)	/* zero-copy loads from staging */
#define MUSERLOAD_FEATURE_LOADV (1ULL << 3)	/* vectored loads */
#define MUSERLOAD_FEATURE_STATS (1ULL << 4)	/* MUSERLOAD_IOC_STATS */
#define MUSERLOAD_FEATURE_RESOLVE (1ULL << 5)	/* MUSERLOAD_IOC_RESOLVE */

/*
 * struct muserload_setup - sizes the object, once.
 * @size:         guest memory bytes: a nonzero page multiple, at most
 *                MUSERLOAD_STAGING_OFFSET.
 * @staging_size: staging bytes: a page multiple, at most
 *                MUSERLOAD_STAGING_MAX (0: no staging).
 * @flags:        must be 0.
 */
struct muserload_setup {
	__u64 size;
	__u64 staging_size;
	__u64 flags;
};

/*
 * struct muserload_arm - set_muserload(): marks [start, start + len) of a
 * guest memory mapping of this object as not loaded. Pages already there are
 * unmapped everywhere and freed (the discard at the switch to post-copy).
 * @start:  page-aligned address in a guest memory mapping of this object.
 * @len:    nonzero page multiple; the range must lie in one such mapping.
 * @signal: 0 selects queue mode (faults wait, events are read from the
 *          MUSERLOAD_IOC_EVENTS descriptor); otherwise the signal sent to the
 *          faulting thread, with si_addr the faulting address and si_code
 *          MUSERLOAD_SI_CODE. SIGKILL, SIGSTOP and numbers outside
 *          1..SIGRTMAX fail with EINVAL.
 * @flags:  MUSERLOAD_ARM_* (signal mode only).
 */
struct muserload_arm {
	__u64 start;
	__u64 len;
	__u32 signal;
	__u32 flags;
};

/*
 * Flag of struct muserload_arm, signal mode only: a kernel-mode access that the
 * signal cannot end (not a GUP that gives up with EINTR, as KVM_RUN's does, but
 * a copy_from_user(), or a GUP for another task) waits as in queue mode, with
 * an event on the events descriptor, after its signal was sent, instead of
 * failing with EFAULT. For callers that turn that EFAULT into damage: KVM's own
 * reads and writes of guest memory (shadow page-table walks, instruction
 * emulation, kvmclock) become a fault injected into the guest. Whoever arms
 * with it must read events (or load every page otherwise).
 */
#define MUSERLOAD_ARM_KERNEL_WAITS (1U << 0)

/*
 * si_code of the signal-mode signal. It is BUS_ADRERR's value, small enough
 * that the kernel never rewrites si_addr's bytes as a sender's pid and uid,
 * whatever the signal; read si_addr in an SA_SIGINFO handler.
 */
#define MUSERLOAD_SI_CODE 2

/* How a load fills each target page (struct muserload_load.mode, low byte). */
#define MUSERLOAD_LOAD_MOVE 1	/* take the page of staging at src: no copy */
#define MUSERLOAD_LOAD_COPY 2	/* copy from the user buffer at src */
#define MUSERLOAD_LOAD_ZERO 3	/* zero fill; src must be 0 */
#define MUSERLOAD_LOAD_WAKE 4	/* no load: wake the range's waiters; src 0 */
#define MUSERLOAD_LOAD_KIND_MASK 0xff
/* Flags of struct muserload_load.mode. */
#define MUSERLOAD_LOAD_DONTWAKE (1ULL << 8) /* load, wake later with WAKE */

/*
 * struct muserload_load - muserload(): loads [dst, dst + len) of a guest
 * memory mapping, page by page, each only if it is still not loaded.
 * @dst:    page-aligned address in a guest memory mapping of this object.
 * @src:    MOVE: page-aligned address in a staging mapping of this object;
 *          COPY: any readable user address; ZERO and WAKE: 0.
 * @len:    nonzero page multiple.
 * @mode:   one MUSERLOAD_LOAD_* kind, optionally with MUSERLOAD_LOAD_DONTWAKE.
 * @loaded: out: bytes loaded (WAKE: bytes woken) before the call stopped.
 *
 * A page that is already loaded stops the call with EEXIST: the pages before
 * it are loaded, its waiters are woken, and its staging page (MOVE) stays
 * where it was, untouched.
 */
struct muserload_load {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__u64 loaded;
};

/* One (dst, src, len) of a vectored load; fields as in struct muserload_load. */
struct muserload_vec {
	__u64 dst;
	__u64 src;
	__u64 len;
};

/*
 * struct muserload_loadv - many loads in one call, in order; stops at the
 * first failure as struct muserload_load does.
 * @vec:    user pointer to @count struct muserload_vec.
 * @count:  1 to MUSERLOAD_LOADV_MAX.
 * @mode:   as in struct muserload_load, for every pair.
 * @loaded: out: bytes loaded over all pairs before the call stopped.
 */
struct muserload_loadv {
	__u64 vec;
	__u64 count;
	__u64 mode;
	__u64 loaded;
};

/* Flags of MUSERLOAD_IOC_EVENTS, for the new descriptor. */
#define MUSERLOAD_EVENTS_NONBLOCK 0x800		/* O_NONBLOCK */
#define MUSERLOAD_EVENTS_CLOEXEC 0x80000	/* O_CLOEXEC */

/*
 * struct muserload_event - what read() on the events descriptor returns, one
 * per page that a thread waits for (however many threads wait for it).
 * @address: the faulting address (of the first thread to touch the page).
 * @offset:  the page's byte offset in the object.
 * @tid:     the first faulting thread's id, in its own pid namespace.
 * @flags:   MUSERLOAD_EVENT_*.
 */
struct muserload_event {
	__u64 address;
	__u64 offset;
	__u32 tid;
	__u32 flags;
};

#define MUSERLOAD_EVENT_WRITE (1U << 0)	 /* the access was a write */
#define MUSERLOAD_EVENT_KERNEL (1U << 1) /* a kernel-mode access (GUP, copy_*_user) */

/* The most events one read() or MUSERLOAD_IOC_RESOLVE returns. */
#define MUSERLOAD_READ_MAX 32

/* Flags of struct muserload_resolve. */
#define MUSERLOAD_RESOLVE_NONBLOCK (1U << 0)	/* never wait for an event */

/*
 * struct muserload_resolve - a queue-mode resolver's step in one system call:
 * the loads of @load, as MUSERLOAD_IOC_LOADV does them (and wakes their
 * waiters), then the next events, as read() on the events descriptor returns
 * them. A resolver that loads what it read and reads again needs one call per
 * batch of faults instead of a load and a read (userfaultfd: poll, read, and an
 * ioctl per page).
 * @load:      as struct muserload_loadv; @load.count 0 loads nothing (and
 *             @load.vec and @load.mode are not read).
 * @events:    user pointer to room for @nr_events struct muserload_event.
 * @nr_events: in: the room, at least 1; out: the events written (at most
 *             MUSERLOAD_READ_MAX).
 * @flags:     MUSERLOAD_RESOLVE_*.
 *
 * A load that fails ends the call with its errno before any event is read;
 * @load.loaded says how far it got. Then the call waits for an event unless
 * MUSERLOAD_RESOLVE_NONBLOCK; @nr_events 0 after a wait means the object was
 * aborted (read()'s end of file). A signal while it waits ends the call with
 * EINTR if there were loads (they are done: call again with @load.count 0);
 * without loads the call restarts as read() does.
 */
struct muserload_resolve {
	struct muserload_loadv load;
	__u64 events;
	__u32 nr_events;
	__u32 flags;
};

/*
 * Buckets of struct muserload_stats.wait_hist: bucket i counts waits of
 * [2^i, 2^(i+1)) microseconds; the last one counts every longer wait.
 */
#define MUSERLOAD_WAIT_HIST_BUCKETS 32

/*
 * struct muserload_stats - counters of one object since MUSERLOAD_IOC_SETUP.
 */
struct muserload_stats {
	__u64 faults_signal_user;	/* signals sent for user accesses */
	__u64 faults_signal_kernel;	/* signals sent for kernel accesses */
	__u64 faults_queue_user;	/* events queued for user accesses */
	__u64 faults_queue_kernel;	/* events queued for kernel accesses */
	__u64 fault_waits;		/* times a thread slept on a page */
	__u64 loads_move;		/* pages loaded, by kind */
	__u64 loads_copy;
	__u64 loads_zero;
	__u64 wakes;			/* pages woken by MUSERLOAD_LOAD_WAKE */
	__u64 eexist;			/* loads refused because already loaded */
	__u64 unloaded;			/* pages armed and not loaded, now */
	__u64 waiters;			/* threads sleeping on a page, now */
	__u64 wait_ns_total;		/* fault-to-wake time of all waits */
	__u64 wait_ns_max;
	__u64 wait_hist[MUSERLOAD_WAIT_HIST_BUCKETS];
	__u64 pages_lock_taken;		/* the pages' own locks: times one was taken, */
	__u64 pages_lock_contended;	/* times one was held by another thread, */
	__u64 pages_lock_wait_ns;	/* the time spent waiting for them, */
	__u64 pages_lock_held_ns;	/* and the time they were held */
};

#define MUSERLOAD_IOC_API _IOWR(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_API, \
				struct muserload_api)
#define MUSERLOAD_IOC_SETUP _IOW(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_SETUP, \
				 struct muserload_setup)
#define MUSERLOAD_IOC_ARM _IOW(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_ARM, \
			       struct muserload_arm)
#define MUSERLOAD_IOC_LOAD _IOWR(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_LOAD, \
				 struct muserload_load)
#define MUSERLOAD_IOC_LOADV _IOWR(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_LOADV, \
				  struct muserload_loadv)
/* Returns a new descriptor (the argument is MUSERLOAD_EVENTS_* flags). */
#define MUSERLOAD_IOC_EVENTS _IO(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_EVENTS)
#define MUSERLOAD_IOC_ABORT _IO(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_ABORT)
#define MUSERLOAD_IOC_STATS _IOR(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_STATS, \
				 struct muserload_stats)
#define MUSERLOAD_IOC_RESOLVE _IOWR(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_RESOLVE, \
				    struct muserload_resolve)

#endif /* _UAPI_LINUX_MUSERLOAD_H */
