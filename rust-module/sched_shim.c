// SPDX-License-Identifier: GPL-2.0
/*
 * What sched.rs needs and the module's Rust code cannot reach: cond_resched()
 * is a macro over a static call or an inline, and fatal_signal_pending() is
 * static inline. Nothing else belongs here.
 */
#include <linux/sched.h>
#include <linux/sched/signal.h>

int muserload_cond_resched_fatal(void);

/* Gives the CPU away if it is wanted; returns whether current was killed. */
int muserload_cond_resched_fatal(void)
{
	cond_resched();
	return fatal_signal_pending(current);
}
