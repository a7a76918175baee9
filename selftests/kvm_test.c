// SPDX-License-Identifier: GPL-2.0
/*
 * A KVM vCPU whose guest memory is a muserload object: its accesses fault
 * through GUP from KVM_RUN, a kernel-mode access. In queue mode the vCPU waits
 * inside KVM_RUN until the resolver loads the page; in signal mode KVM_RUN
 * returns EINTR with the signal delivered, the handler loads, and re-entering
 * KVM_RUN succeeds.
 */
#include <signal.h>
#include <linux/kvm.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define GUEST_PAGES 16
#define DATA_GPA 0x1000
#define OUT_PORT 0x10

/* 16-bit real mode: mov al, [DATA_GPA]; out OUT_PORT, al; hlt */
static const unsigned char guest_code[] = {
	0xa0, DATA_GPA & 0xff, DATA_GPA >> 8,
	0xe6, OUT_PORT,
	0xf4,
};

FIXTURE(kvm)
{
	struct ml ml;
	int kvm, vm, vcpu;
	struct kvm_run *run;
};

FIXTURE_SETUP(kvm)
{
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = GUEST_PAGES * PAGE,
	};
	struct kvm_regs regs = { .rip = 0, .rflags = 2 };
	struct kvm_sregs sregs;
	char code[PAGE] = { 0 };
	int run_size;

	ASSERT_EQ(0, ml_open(&self->ml, GUEST_PAGES * PAGE, 0));
	memcpy(code, guest_code, sizeof(guest_code));
	ASSERT_EQ(0, ml_load(&self->ml, self->ml.guest, code, PAGE, MUSERLOAD_LOAD_COPY, NULL));

	self->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->kvm) TH_LOG("/dev/kvm: %s", strerror(errno));
	self->vm = ioctl(self->kvm, KVM_CREATE_VM, 0);
	ASSERT_LE(0, self->vm);
	region.userspace_addr = (uintptr_t)self->ml.guest;
	ASSERT_EQ(0, ioctl(self->vm, KVM_SET_USER_MEMORY_REGION, &region));
	self->vcpu = ioctl(self->vm, KVM_CREATE_VCPU, 0);
	ASSERT_LE(0, self->vcpu);
	run_size = ioctl(self->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	ASSERT_LT(0, run_size);
	self->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, self->vcpu, 0);
	ASSERT_NE(MAP_FAILED, self->run);
	ASSERT_EQ(0, ioctl(self->vcpu, KVM_GET_SREGS, &sregs));
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = 0;
	sregs.ds.selector = 0;
	ASSERT_EQ(0, ioctl(self->vcpu, KVM_SET_SREGS, &sregs));
	ASSERT_EQ(0, ioctl(self->vcpu, KVM_SET_REGS, &regs));
}

FIXTURE_TEARDOWN(kvm)
{
	close(self->vcpu);
	close(self->vm);
	close(self->kvm);
	ml_close(&self->ml);
}

/* Runs the vCPU to its OUT and returns the byte it wrote, or -errno of KVM_RUN. */
static int run_to_out(int vcpu, struct kvm_run *run)
{
	if (ioctl(vcpu, KVM_RUN, 0))
		return -errno;
	if (run->exit_reason != KVM_EXIT_IO || run->io.port != OUT_PORT)
		return -1000 - run->exit_reason;
	return *((unsigned char *)run + run->io.data_offset);
}

TEST_F(kvm, queue_mode)
{
	struct ml *ml = &self->ml;
	struct muserload_stats st;
	struct ml_resolver r;
	unsigned char expect[PAGE];

	ASSERT_EQ(0, ml_arm(ml, ml->guest + PAGE, (GUEST_PAGES - 1) * PAGE, 0));
	ASSERT_EQ(0, ml_resolver_start(&r, ml));
	ml_fill(expect, DATA_GPA / PAGE);
	EXPECT_EQ(expect[0], run_to_out(self->vcpu, self->run));
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_queue_kernel);
	EXPECT_EQ(0, st.faults_queue_user);
	EXPECT_EQ(1, st.fault_waits);
	/* The resolver counts a page after the load that woke the vCPU: join it first. */
	ml_resolver_stop(&r);
	EXPECT_EQ(1, r.served);
}

static struct ml *sig_ml;
static volatile int sig_count;
static void *volatile sig_addr;

static void load_handler(int sig, siginfo_t *info, void *uc)
{
	char *page = (char *)((uintptr_t)info->si_addr & ~(PAGE - 1));
	char buf[PAGE] __attribute__((aligned(8)));

	sig_count++;
	sig_addr = info->si_addr;
	ml_fill(buf, 77);
	ml_load(sig_ml, page, buf, PAGE, MUSERLOAD_LOAD_COPY, NULL);
}

TEST_F(kvm, signal_mode)
{
	struct ml *ml = &self->ml;
	struct sigaction sa = { .sa_sigaction = load_handler, .sa_flags = SA_SIGINFO };
	struct muserload_stats st;
	unsigned char expect[PAGE];
	int ret;

	sig_ml = ml;
	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));
	ASSERT_EQ(0, ml_arm(ml, ml->guest + PAGE, (GUEST_PAGES - 1) * PAGE, SIGUSR1));
	/* KVM_RUN returns with the signal delivered... */
	ret = run_to_out(self->vcpu, self->run);
	EXPECT_EQ(-EINTR, ret);
	EXPECT_EQ(1, sig_count);
	EXPECT_EQ(ml->guest + DATA_GPA, sig_addr);
	/* ...and re-entering it finishes the access. */
	ml_fill(expect, 77);
	EXPECT_EQ(expect[0], run_to_out(self->vcpu, self->run));
	EXPECT_EQ(1, sig_count);
	ASSERT_EQ(0, ml_stats(ml, &st));
	EXPECT_EQ(1, st.faults_signal_kernel);
	signal(SIGUSR1, SIG_DFL);
}

TEST_HARNESS_MAIN
