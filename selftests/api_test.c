// SPDX-License-Identifier: GPL-2.0
/*
 * The device node and the handshake: open, MUSERLOAD_IOC_API, and the errno of every
 * handshake a module must refuse.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/muserload.h>

#include "kselftest_harness.h"

#define MUSERLOAD_DEV "/dev/muserload"

FIXTURE(api)
{
	int fd;
};

FIXTURE_SETUP(api)
{
	self->fd = open(MUSERLOAD_DEV, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->fd) TH_LOG("open %s: %s", MUSERLOAD_DEV, strerror(errno));
}

FIXTURE_TEARDOWN(api)
{
	close(self->fd);
}

TEST(node_is_world_accessible)
{
	struct stat st;

	ASSERT_EQ(0, stat(MUSERLOAD_DEV, &st));
	ASSERT_TRUE(S_ISCHR(st.st_mode));
	ASSERT_EQ(0666, st.st_mode & 07777);
}

TEST_F(api, handshake)
{
	struct muserload_api api = { .api = MUSERLOAD_API };

	ASSERT_EQ(0, ioctl(self->fd, MUSERLOAD_IOC_API, &api));
	ASSERT_EQ(MUSERLOAD_API, api.api);
	ASSERT_EQ(MUSERLOAD_FEATURE_SIGNAL | MUSERLOAD_FEATURE_QUEUE |
		  MUSERLOAD_FEATURE_MOVE | MUSERLOAD_FEATURE_LOADV |
		  MUSERLOAD_FEATURE_STATS | MUSERLOAD_FEATURE_RESOLVE,
		  api.features);
}

TEST_F(api, handshake_twice)
{
	struct muserload_api api = { .api = MUSERLOAD_API };

	ASSERT_EQ(0, ioctl(self->fd, MUSERLOAD_IOC_API, &api));
	api.features = 0;
	ASSERT_EQ(0, ioctl(self->fd, MUSERLOAD_IOC_API, &api));
}

TEST_F(api, unsupported_version)
{
	__u64 versions[] = { 0, MUSERLOAD_API + 1, ~0ULL };
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(versions); i++) {
		struct muserload_api api = { .api = versions[i] };

		ASSERT_EQ(-1, ioctl(self->fd, MUSERLOAD_IOC_API, &api));
		ASSERT_EQ(EINVAL, errno);
		/* The module says which version it speaks. */
		ASSERT_EQ(MUSERLOAD_API, api.api);
	}
}

TEST_F(api, unknown_feature)
{
	struct muserload_api api = {
		.api = MUSERLOAD_API,
		.features = 1ULL << 63,
	};

	ASSERT_EQ(-1, ioctl(self->fd, MUSERLOAD_IOC_API, &api));
	ASSERT_EQ(EINVAL, errno);
	ASSERT_EQ(0, api.features & (1ULL << 63));
}

TEST_F(api, unknown_ioctl)
{
	struct muserload_api api = { .api = MUSERLOAD_API };

	/* An unused number of ours, and another driver's type. */
	ASSERT_EQ(-1, ioctl(self->fd, _IOWR(MUSERLOAD_IOCTL_BASE, 0x7f, struct muserload_api),
			    &api));
	ASSERT_EQ(ENOTTY, errno);
	ASSERT_EQ(-1, ioctl(self->fd, _IOWR('U', _MUSERLOAD_API, struct muserload_api), &api));
	ASSERT_EQ(ENOTTY, errno);
}

TEST_F(api, bad_pointer)
{
	ASSERT_EQ(-1, ioctl(self->fd, MUSERLOAD_IOC_API, NULL));
	ASSERT_EQ(EFAULT, errno);
	ASSERT_EQ(-1, ioctl(self->fd, MUSERLOAD_IOC_API, (void *)-4096L));
	ASSERT_EQ(EFAULT, errno);
}

/* An open object pins the module. */
TEST_F(api, rmmod_refused_while_open)
{
	ASSERT_EQ(-1, syscall(SYS_delete_module, "muserload", O_NONBLOCK));
	ASSERT_EQ(EWOULDBLOCK, errno);
}

/* Opens and handshakes need no privilege. */
TEST(unprivileged)
{
	pid_t pid = fork();
	int status;

	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct muserload_api api = { .api = MUSERLOAD_API };
		int fd;

		if (setgid(65534) || setuid(65534))
			_exit(2);
		fd = open(MUSERLOAD_DEV, O_RDWR);
		if (fd < 0)
			_exit(3);
		_exit(ioctl(fd, MUSERLOAD_IOC_API, &api) ? 4 : 0);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	ASSERT_EQ(0, WEXITSTATUS(status));
}

TEST_HARNESS_MAIN
