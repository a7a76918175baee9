// SPDX-License-Identifier: GPL-2.0
/*
 * Pages are charged to the memory cgroup of the task that makes them: a task's
 * loads, and the zero fills of its faults, count in its cgroup's memory.current.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "muserload_util.h"
#include "kselftest_harness.h"

#define CGROUP "/sys/fs/cgroup/muserload-test"
#define LOADED (8UL << 20)

/* In a child inside the cgroup: loads and faults LOADED bytes each; 0 if charged here. */
static int load_and_fault(void)
{
	long start, after_load, after_fault;
	char pid[32], *src;
	struct ml ml;
	size_t off;

	snprintf(pid, sizeof(pid), "%d", getpid());
	if (ml_write_file(CGROUP "/cgroup.procs", pid))
		return 10;
	src = mmap(NULL, LOADED, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (src == MAP_FAILED)
		return 11;
	memset(src, 0x5a, LOADED);
	if (ml_open(&ml, 2 * LOADED, 0))
		return 12;
	start = ml_read_key(CGROUP "/memory.current", "");
	if (ml_load(&ml, ml.guest, src, LOADED, MUSERLOAD_LOAD_COPY, NULL))
		return 13;
	after_load = ml_read_key(CGROUP "/memory.current", "");
	for (off = LOADED; off < 2 * LOADED; off += PAGE)
		ml.guest[off] = 1;
	after_fault = ml_read_key(CGROUP "/memory.current", "");
	/* Page tables and slab come on top; at least the pages themselves are here. */
	if (after_load - start < (long)LOADED)
		return 14;
	if (after_fault - after_load < (long)LOADED)
		return 15;
	ml_close(&ml);
	return 0;
}

TEST(charged_to_the_caller)
{
	int status;
	pid_t pid;

	ASSERT_EQ(0, ml_write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory"));
	ASSERT_TRUE(mkdir(CGROUP, 0755) == 0 || errno == EEXIST);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(load_and_fault());
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status));
	EXPECT_EQ(0, rmdir(CGROUP));
}

TEST_HARNESS_MAIN
