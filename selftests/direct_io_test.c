// SPDX-License-Identifier: GPL-2.0
/*
 * O_DIRECT I/O on guest pages: the block layer pins them with GUP from the
 * calling thread, as KVM does, instead of copying through the kernel's own
 * accessors. A loop device over a tmpfs file gives the test a block device.
 */
#include <linux/loop.h>
#include <signal.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 8
#define DISK_PAGES 16

static struct ml *sig_ml;
static volatile int sig_count;

static void zero_handler(int sig, siginfo_t *info, void *uc)
{
	char *page = (char *)((uintptr_t)info->si_addr & ~(PAGE - 1));

	sig_count++;
	ml_load(sig_ml, page, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL);
}

FIXTURE(dio)
{
	struct ml ml;
	char backing[64];
	char loop[32];
	int file;	/* the backing file, buffered */
	int disk;	/* the loop device, O_DIRECT */
};

FIXTURE_SETUP(dio)
{
	struct loop_config cfg = { .block_size = PAGE };
	char page[PAGE] __attribute__((aligned(8)));
	int ctl, dev, i;

	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, 0));
	snprintf(self->backing, sizeof(self->backing), "/tmp/dio-%d", getpid());
	self->file = open(self->backing, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT_LE(0, self->file);
	for (i = 0; i < DISK_PAGES; i++) {
		ml_fill(page, 100 + i);
		ASSERT_EQ(PAGE, pwrite(self->file, page, PAGE, i * PAGE));
	}
	ctl = open("/dev/loop-control", O_RDWR);
	ASSERT_LE(0, ctl);
	i = ioctl(ctl, LOOP_CTL_GET_FREE);
	ASSERT_LE(0, i);
	close(ctl);
	snprintf(self->loop, sizeof(self->loop), "/dev/loop%d", i);
	dev = open(self->loop, O_RDWR);
	ASSERT_LE(0, dev);
	cfg.fd = self->file;
	ASSERT_EQ(0, ioctl(dev, LOOP_CONFIGURE, &cfg));
	close(dev);
	self->disk = open(self->loop, O_RDWR | O_DIRECT);
	ASSERT_LE(0, self->disk);
}

FIXTURE_TEARDOWN(dio)
{
	int dev = open(self->loop, O_RDWR);

	close(self->disk);
	if (dev >= 0) {
		ioctl(dev, LOOP_CLR_FD);
		close(dev);
	}
	close(self->file);
	unlink(self->backing);
	ml_close(&self->ml);
}

/* Loaded pages (copied, or zero-loaded and not yet allocated) are I/O buffers. */
TEST_F(dio, loaded_pages_are_buffers)
{
	char *copied = self->ml.guest, *zeroed = self->ml.guest + PAGE;
	char page[PAGE] __attribute__((aligned(8)));

	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, 2 * PAGE, 0));
	ml_fill(page, 7);
	ASSERT_EQ(0, ml_load(&self->ml, copied, page, PAGE, MUSERLOAD_LOAD_COPY, NULL));
	ASSERT_EQ(0, ml_load(&self->ml, zeroed, NULL, PAGE, MUSERLOAD_LOAD_ZERO, NULL));

	ASSERT_EQ(PAGE, pwrite(self->disk, copied, PAGE, 0));
	ASSERT_EQ(0, fsync(self->disk));
	ASSERT_EQ(PAGE, pread(self->file, page, PAGE, 0));
	ASSERT_TRUE(ml_check(page, 7));

	ASSERT_EQ(PAGE, pread(self->disk, zeroed, PAGE, 3 * PAGE));
	ASSERT_TRUE(ml_check(zeroed, 103));
}

/*
 * Queue mode: O_DIRECT from or into an unloaded page waits for its load, like
 * any kernel access, then does its I/O; a read's data replaces what was loaded.
 */
TEST_F(dio, unloaded_pages_wait_for_their_load)
{
	char *from = self->ml.guest + 2 * PAGE, *into = self->ml.guest + 3 * PAGE;
	char page[PAGE] __attribute__((aligned(8)));
	struct muserload_stats st;
	struct ml_resolver r;

	ASSERT_EQ(0, ml_arm(&self->ml, self->ml.guest, GUEST_PAGES * PAGE, 0));
	ASSERT_EQ(0, ml_resolver_start(&r, &self->ml));

	ASSERT_EQ(PAGE, pwrite(self->disk, from, PAGE, 5 * PAGE));
	ASSERT_EQ(0, fsync(self->disk));
	ASSERT_EQ(PAGE, pread(self->file, page, PAGE, 5 * PAGE));
	ASSERT_TRUE(ml_check(page, 2));	/* what the resolver loaded */

	ASSERT_EQ(PAGE, pread(self->disk, into, PAGE, 6 * PAGE));
	ASSERT_TRUE(ml_check(into, 106));

	ml_resolver_stop(&r);
	ASSERT_EQ(2, r.served);
	ASSERT_EQ(0, ml_stats(&self->ml, &st));
	ASSERT_EQ(2, st.faults_queue_kernel);
	ASSERT_EQ(0, st.faults_queue_user);
}

/*
 * Signal mode: the I/O fails with EFAULT and the signal is delivered; once its
 * handler has loaded the page, the retried I/O succeeds.
 */
TEST_F(dio, signal_mode_fails_then_retry_succeeds)
{
	struct sigaction sa = { .sa_sigaction = zero_handler, .sa_flags = SA_SIGINFO };
	char *buf = self->ml.guest + 4 * PAGE;
	struct muserload_stats st;

	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));
	sig_ml = &self->ml;
	sig_count = 0;
	ASSERT_EQ(0, ml_arm(&self->ml, buf, PAGE, SIGUSR1));

	ASSERT_EQ(-1, pread(self->disk, buf, PAGE, 8 * PAGE));
	ASSERT_EQ(EFAULT, errno);
	ASSERT_EQ(1, sig_count);
	ASSERT_EQ(PAGE, pread(self->disk, buf, PAGE, 8 * PAGE));
	ASSERT_TRUE(ml_check(buf, 108));
	ASSERT_EQ(1, sig_count);
	ASSERT_EQ(0, ml_stats(&self->ml, &st));
	ASSERT_EQ(1, st.faults_signal_kernel);
}

TEST_HARNESS_MAIN
