// SPDX-License-Identifier: GPL-2.0
/*
 * What clock.rs needs and the module's Rust code cannot reach: local_clock()
 * is static inline where the architecture's sched_clock() is stable, and bindgen
 * does not see its header. Nothing else belongs here.
 */
#include <linux/sched/clock.h>

u64 muserload_local_clock(void);

u64 muserload_local_clock(void)
{
	return local_clock();
}
